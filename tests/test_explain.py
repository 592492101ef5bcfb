"""anomvae.explain and the per-feature contributions behind it: contributions
and the KL term add up to the score, and point at the planted column or pixels;
heatmaps on one scale per model. (Heatmaps as the score command writes them:
test_cli_score_images.py.)"""

import copy

import numpy as np
import pandas as pd
import pytest
from conftest import FEATURES, digits
from conftest import draw_rows as draw

from anomvae import VAEAnomalyDetector
from anomvae.explain import HeatScale, explain, heatmap_image

# ------------------------------------------------------------- tables


def test_contributions_and_kl_add_up_to_the_anomaly_score(detector):
    X = pd.concat([draw(40, seed=13), draw(5, seed=14) * 4])
    contributions, kl = detector.feature_contributions(X), detector.kl_divergence(X)
    assert contributions.shape == (45, len(FEATURES)) and contributions.dtype == np.float64
    assert np.all(kl >= 0)
    np.testing.assert_allclose(contributions.sum(1) + kl, -detector.score_samples(X), rtol=1e-5, atol=1e-4)


def test_contributions_do_not_depend_on_the_batch(detector):
    X = draw(70, seed=15)
    together = detector.feature_contributions(X)
    alone = np.vstack([detector.feature_contributions(X.iloc[[i]]) for i in (0, 33, 69)])
    np.testing.assert_array_equal(alone, together[[0, 33, 69]])


@pytest.mark.parametrize("column", [0, 2, 4])
def test_planted_anomaly_column_ranks_first(detector, column):
    X = draw(20, seed=16)
    X.iloc[:, column] += 8 * X.iloc[:, column].std()
    contributions = detector.feature_contributions(X)
    assert np.all(np.argmax(contributions, axis=1) == column)
    explained = explain(detector, X, 2)
    assert all(items[0]["feature"] == FEATURES[column] for items in explained)
    first = explained[0][0]
    assert first["observed"] == X.iloc[0, column]
    reconstructed = detector.inverse_transform(detector.transform(X.iloc[[0]]))[0, column]
    assert first["reconstructed"] == reconstructed and first["contribution"] == contributions[0, column]


# ------------------------------------------------------------- images


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli", "gaussian"])
def test_conv_contributions_and_kl_add_up_to_the_score(test_images, likelihood):
    detector = VAEAnomalyDetector(
        architecture="conv", image_shape=(1, 8, 8), likelihood=likelihood, max_epochs=2,
        n_iter_no_change=None, random_state=0,
    ).fit(digits(0)[:60] * 0.9 + 0.05)
    contributions = detector.feature_contributions(test_images)
    kl = detector.kl_divergence(test_images)
    assert contributions.shape == test_images.shape and kl.shape == (len(test_images),)
    assert (kl > 0).all()
    total = contributions.sum(axis=1) + kl
    np.testing.assert_allclose(total, -detector.score_samples(test_images), rtol=1e-5, atol=1e-4)
    if likelihood == "gaussian":  # the per-pixel Jacobian of standardisation is included
        assert not np.allclose(detector.scale_, 1.0)


def test_contributions_point_at_the_changed_pixels(conv_model):
    image = digits(0)[130].copy()
    blotted = image.copy().reshape(8, 8)
    blotted[5:8, 0:3] = 1.0 - blotted[5:8, 0:3]
    before, after = conv_model.feature_contributions(np.vstack([image, blotted.reshape(-1)]))
    increase = (after - before).reshape(8, 8)
    assert increase[5:8, 0:3].sum() > increase.sum() - increase[5:8, 0:3].sum()


# ----------------------------------------------------------- heatmaps


def _redness(picture):
    pixels = np.asarray(picture, dtype=float)
    return np.clip(pixels[..., 0] - pixels[..., 1:].mean(axis=-1), 0, None).mean()


def test_the_model_scale_starts_at_a_typical_normal_pixel(conv_model):
    scale = HeatScale.for_model(conv_model)
    assert scale.low == np.median(conv_model.training_scores_) / 64 and not scale.per_image
    assert scale.high == pytest.approx(scale.low + np.log(100))
    calibrated = copy.deepcopy(conv_model).calibrate(  # leaves the shared fixture alone
        digits(0)[120:170], fpr=0.1)
    assert HeatScale.for_model(calibrated).low == np.median(calibrated.reference_scores_) / 64


def test_normal_images_look_calm_and_anomalies_hot_on_the_model_scale(conv_model, test_images):
    contributions = conv_model.feature_contributions(test_images)
    scale = HeatScale.for_model(conv_model)
    redness = np.array([_redness(heatmap_image(x, c, (1, 8, 8), scale=scale, legend=False))
                        for x, c in zip(test_images, contributions)])
    zeros, threes = redness[:-40], redness[-40:]
    assert zeros.mean() < 0.4 * threes.mean()
    assert np.median(zeros) < np.percentile(threes, 10)
    own = np.array([_redness(heatmap_image(x, c, (1, 8, 8), legend=False)) for x, c in zip(test_images, contributions)])
    assert own[:-40].mean() > 0.7 * own[-40:].mean()  # each image's own scale hides the difference


def test_the_caption_shows_the_flag_and_the_legend_the_scale(conv_model, test_images):
    contributions = conv_model.feature_contributions(test_images[:1])[0]
    scale = HeatScale(0.5, 5.1)
    bare = heatmap_image(test_images[0], contributions, (1, 8, 8), scale=scale, legend=False)
    assert bare.size == (256, 256)
    caption = {}
    for score in (30.0, 10.0):
        picture = heatmap_image(test_images[0], contributions, (1, 8, 8), scale=scale, score=score, threshold=20.0,
                                legend=False)
        assert picture.width == 256 and picture.height > 256
        assert np.array_equal(np.asarray(picture)[:256], np.asarray(bare))
        caption[score] = np.asarray(picture, dtype=int)[256:]
    red = lambda p: ((p[..., 0] > 150) & (p[..., 1] < 80)).sum()  # noqa: E731
    green = lambda p: ((p[..., 1] > p[..., 0] + 40) & (p[..., 1] > p[..., 2] + 40)).sum()  # noqa: E731
    assert red(caption[30.0]) > 20 and green(caption[30.0]) == 0  # ANOMALY in red
    assert green(caption[10.0]) > 20 and red(caption[10.0]) == 0  # normal in green
    legend = heatmap_image(test_images[0], contributions, (1, 8, 8), scale=scale)
    bar = np.asarray(legend, dtype=int)[256:]
    assert red(bar) > 20  # the colour bar reaches full colour

"""anomvae.explain and the per-feature contributions behind it: contributions
and the KL term add up to the score, and point at the planted column or pixels.
(Heatmaps are drawn by the score command: test_cli_score.py.)"""

import numpy as np
import pandas as pd
import pytest
from conftest import FEATURES, digits
from conftest import draw_rows as draw

from anomvae import VAEAnomalyDetector
from anomvae.explain import explain

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

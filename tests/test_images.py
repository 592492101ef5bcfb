"""The convolutional VAE on image rows: shapes, scores, contributions, files."""

import math
import pickle
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning

import anomvae
from anomvae import VAEAnomalyDetector
from anomvae.config import NetworkConfig, conv_plan
from anomvae.model import build_vae


def digits(digit):
    data = load_digits()
    return (data.data[data.target == digit] / 16.0).astype(np.float32)


@pytest.fixture(scope="module")
def conv_model():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return VAEAnomalyDetector(
            architecture="conv", image_shape=(1, 8, 8), likelihood="bernoulli", max_epochs=8,
            batch_size=32, random_state=0,
        ).fit(digits(0)[:120])


@pytest.fixture(scope="module")
def test_images():
    return np.vstack([digits(0)[120:], digits(3)[:40]])


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 64, 64), (1, 7, 9), (3, 5, 1)])
def test_conv_network_maps_any_size_back_to_itself(shape):
    n_features = math.prod(shape)
    module = build_vae(NetworkConfig(architecture="conv", image_shape=shape, n_features=n_features,
                                     hidden_dims=(16,), latent_dim=3, likelihood="bernoulli"))
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())
    x = torch.rand(2, n_features)
    mu, logvar = module.encode(x)
    assert mu.shape == logvar.shape == (2, 3)
    assert module.decode(torch.randn(4, 2, 3)).shape == (4, 2, n_features)


def test_conv_plan_halves_until_four_pixels():
    assert conv_plan((1, 8, 8)) == ([32], [(4, 4)])
    assert conv_plan((1, 28, 28)) == ([32, 64, 128], [(14, 14), (7, 7), (4, 4)])
    channels, sizes = conv_plan((3, 64, 64))
    assert channels == [32, 64, 128, 128] and sizes[-1] == (4, 4)


def test_conv_model_separates_another_digit(conv_model, test_images):
    from sklearn.metrics import roc_auc_score

    labels = np.r_[np.zeros(len(test_images) - 40), np.ones(40)]
    assert roc_auc_score(labels, -conv_model.score_samples(test_images)) > 0.9
    assert conv_model.image_shape_ == (1, 8, 8)
    assert conv_model.latent_dim_ == 4  # auto for images: ceil(sqrt(8 * 8) / 2)


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_conv_score_of_an_image_ignores_its_batch(conv_model, test_images, data):
    reference = conv_model.score_samples(test_images)
    rows = data.draw(st.lists(st.integers(0, len(test_images) - 1), min_size=1, max_size=40))
    assert np.array_equal(conv_model.score_samples(test_images[rows]), reference[rows])


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli", "gaussian"])
def test_contributions_and_kl_add_up_to_the_score(test_images, likelihood):
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


def test_image_shape_is_checked_at_fit():
    X = digits(0)[:20]
    with pytest.raises(ValueError, match="needs image_shape"):
        VAEAnomalyDetector(architecture="conv").fit(X)
    with pytest.raises(ValueError, match="64 features per row"):
        VAEAnomalyDetector(architecture="conv", image_shape=(1, 7, 7)).fit(X)
    detector = VAEAnomalyDetector(architecture="conv", image_shape=(1, -1, 8), max_epochs=1).fit(X)
    assert detector.image_shape_ == (1, 8, 8) and detector.image_shape == (1, -1, 8)


def test_conv_model_file_and_pickle_round_trip(conv_model, test_images, tmp_path):
    anomvae.save(conv_model, tmp_path / "m.anomvae")
    loaded = anomvae.load(tmp_path / "m.anomvae")
    assert loaded.image_shape_ == (1, 8, 8) and loaded.architecture == "conv"
    assert np.array_equal(loaded.score_samples(test_images), conv_model.score_samples(test_images))
    unpickled = pickle.loads(pickle.dumps(conv_model))
    assert np.array_equal(unpickled.score_samples(test_images), conv_model.score_samples(test_images))


def test_decoded_images_stay_in_range(conv_model):
    samples = conv_model.sample(5, random_state=0)
    assert samples.shape == (5, 64) and samples.min() >= 0 and samples.max() <= 1


def test_benchmark_quick_run_beats_chance_clearly():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "digits.py"
    spec = importlib.util.spec_from_file_location("digits_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.main(["--quick"])
    assert [row[0] for row in rows] == [0, 1]
    for digit, n_train, n_test, vae_auc, forest_auc in rows:
        assert vae_auc > 0.85, (digit, vae_auc)

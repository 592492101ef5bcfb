"""anomvae.config: the convolutional network's plan and the image shape
that fit resolves from ``image_shape``."""

import pytest
from conftest import digits

from anomvae import VAEAnomalyDetector
from anomvae.config import NetworkConfig, auto_latent_dim, conv_plan, resolve_image_shape


def test_conv_plan_halves_until_four_pixels():
    assert conv_plan((1, 8, 8)) == ([32], [(4, 4)])
    assert conv_plan((1, 28, 28)) == ([32, 64, 128], [(14, 14), (7, 7), (4, 4)])
    channels, sizes = conv_plan((3, 64, 64))
    assert channels == [32, 64, 128, 128] and sizes[-1] == (4, 4)


def test_image_shape_is_checked_at_fit():
    X = digits(0)[:20]
    with pytest.raises(ValueError, match="needs image_shape"):
        VAEAnomalyDetector(architecture="conv").fit(X)
    with pytest.raises(ValueError, match="64 features per row"):
        VAEAnomalyDetector(architecture="conv", image_shape=(1, 7, 7)).fit(X)
    detector = VAEAnomalyDetector(architecture="conv", image_shape=(1, -1, 8), max_epochs=1).fit(X)
    assert detector.image_shape_ == (1, 8, 8) and detector.image_shape == (1, -1, 8)


def test_network_config_round_trips_through_its_json_form():
    config = NetworkConfig("conv", 64, (16, 8), 4, "bernoulli", 8, None, (1, 8, 8))
    assert config.to_dict() == {"architecture": "conv", "n_features": 64, "hidden_dims": [16, 8], "latent_dim": 4,
                                "likelihood": "bernoulli", "n_score_samples": 8, "image_shape": [1, 8, 8]}
    assert NetworkConfig.from_dict(config.to_dict()) == config
    assert config.variance_floors() is None


@pytest.mark.parametrize("changes, message", [
    ({"min_variance": (1e-3,) * 3}, "min_variance holds 3 values for 4 features"),
    ({"architecture": "conv", "image_shape": (1, 3, 3)}, r"image_shape \[1, 3, 3\] does not hold 4 features"),
])
def test_network_config_refuses_parts_that_do_not_fit(changes, message):
    values = dict(architecture="mlp", n_features=4, hidden_dims=(8,), latent_dim=2, likelihood="gaussian")
    with pytest.raises(ValueError, match=message):
        NetworkConfig(**{**values, **changes})


def test_auto_sizes():
    assert [auto_latent_dim(n) for n in (1, 4, 5, 512, 5000)] == [2, 2, 3, 23, 32]
    assert auto_latent_dim(64, (1, 8, 8)) == 4 and auto_latent_dim(1024, (1, 32, 32)) == 16
    assert resolve_image_shape((3, -1, 4), 48) == (3, 4, 4)
    with pytest.raises(ValueError, match="does not match X"):
        resolve_image_shape((3, 4, 4), 47)

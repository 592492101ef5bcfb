"""scikit-learn's own estimator checks, run the way scikit-learn runs them."""

import warnings

import pytest
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import parametrize_with_checks

from anomvae import VAEAnomalyDetector
from anomvae.errors import PosteriorCollapseWarning


@pytest.fixture(autouse=True)
def _quiet_convergence():
    # The checks train for a handful of epochs on purpose, too few to use the latent space.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", PosteriorCollapseWarning)
        yield


@parametrize_with_checks(
    [
        VAEAnomalyDetector(max_epochs=5, batch_size=64, hidden_dims=(16,)),
        VAEAnomalyDetector(max_epochs=3, n_iter_no_change=None, validation_fraction=0.0, contamination=0.1),
        # The checks feed 1 to 10 features, so the image is one row of pixels
        # whose width is inferred (-1) from the data, as numpy.reshape does.
        VAEAnomalyDetector(architecture="conv", image_shape=(1, 1, -1), max_epochs=3, hidden_dims=(8,)),
    ]
)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)

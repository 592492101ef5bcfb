import subprocess
import sys
import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

from anomvae import VAEAnomalyDetector


def make_low_rank(n_samples, n_features=8, rank=3, noise=0.1, seed=0, basis_seed=None):
    """Rows near a random ``rank``-dimensional subspace, plus Gaussian noise.

    With ``basis_seed`` the subspace is fixed by it, so that different
    ``seed`` values give independent draws of one distribution.
    """
    rng = np.random.RandomState(seed)
    basis_rng = rng if basis_seed is None else np.random.RandomState(basis_seed)
    basis = basis_rng.normal(size=(rank, n_features))
    return rng.normal(size=(n_samples, rank)) @ basis + noise * rng.normal(size=(n_samples, n_features))


def quiet_fit(estimator, X):
    """``estimator.fit(X)`` without the ConvergenceWarning of short test fits."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return estimator.fit(X)


@pytest.fixture(scope="session")
def normal_rows():
    return make_low_rank(800)


@pytest.fixture(scope="session")
def inliers(normal_rows):
    """Training rows: the first 600 normal rows."""
    return normal_rows[:600]


@pytest.fixture(scope="session")
def test_set(normal_rows):
    """200 held-out normal rows, then 40 planted outliers; labels 1 = outlier."""
    normal = normal_rows[600:]
    rng = np.random.RandomState(1)
    # Off the subspace, but at the inliers' own per-feature scale, so that a
    # detector must learn the correlations rather than the marginal ranges.
    outliers = rng.normal(size=(40, normal.shape[1])) * normal.std(axis=0)
    return np.vstack([normal, outliers]), np.r_[np.zeros(200), np.ones(40)]


@pytest.fixture(scope="session")
def fitted(inliers):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return VAEAnomalyDetector(max_epochs=60, batch_size=32, lr=3e-3, random_state=0).fit(inliers)


def assert_runs_without(args, module):
    """Run ``anomvae ARGS`` in a fresh interpreter: it succeeds without
    ever importing ``module``."""
    code = (
        "import sys\nfrom anomvae.cli import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        f"assert {module!r} not in sys.modules, '{module} was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def model_file_opens(monkeypatch):
    """The paths of every model file opened while the test runs, in order."""
    from anomvae import persistence

    opened = []
    real_open = persistence._open
    monkeypatch.setattr(persistence, "_open", lambda path: opened.append(path) or real_open(path))
    return opened

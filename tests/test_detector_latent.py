"""VAEAnomalyDetector's latent space: decoded rows as DataFrames under
set_output, interpolation between rows, and the posterior-collapse diagnosis."""

import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import FAST, quiet_fit
from sklearn.base import clone

from anomvae import VAEAnomalyDetector
from anomvae.errors import PosteriorCollapseWarning

COLUMNS = [f"f{i}" for i in range(8)]


@pytest.fixture(scope="module")
def frame(inliers):
    return pd.DataFrame(inliers[:300], columns=COLUMNS, index=np.arange(300) + 1000)


@pytest.fixture(scope="module")
def framed(frame):
    """A detector fitted on a DataFrame, its output left at the default."""
    return quiet_fit(VAEAnomalyDetector(**{**FAST, "max_epochs": 3}), frame)


@pytest.fixture
def pandas_out(framed):
    """``framed`` with set_output(transform="pandas") (set_output changes the detector in place)."""
    yield framed.set_output(transform="pandas")
    framed.set_output(transform="default")


def _no_warnings(method, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return method(*args, **kwargs)


# ------------------------------------------- decoded rows under set_output


def test_decoded_rows_are_arrays_by_default(framed, frame):
    assert isinstance(framed.inverse_transform(framed.transform(frame[:3])), np.ndarray)
    assert isinstance(framed.sample(3, random_state=0), np.ndarray)
    assert isinstance(framed.interpolate(frame.iloc[0], frame.iloc[1], n_steps=3), np.ndarray)


def test_decoded_rows_are_named_frames_under_set_output_and_score_back_without_warnings(framed, frame):
    expected = {
        "inverse": framed.inverse_transform(framed.transform(frame[:5])),
        "sample": framed.sample(4, random_state=0),
        "noisy": framed.sample(4, random_state=0, noise=True),
        "path": framed.interpolate(frame.iloc[0], frame.iloc[1], n_steps=3),
    }
    framed.set_output(transform="pandas")
    try:
        Z = framed.transform(frame[:5])
        assert isinstance(Z, pd.DataFrame)
        got = {
            "inverse": framed.inverse_transform(Z),
            "sample": framed.sample(4, random_state=0),
            "noisy": framed.sample(4, random_state=0, noise=True),
            "path": framed.interpolate(frame.iloc[0], frame.iloc[1], n_steps=3),
        }
        for name, rows in got.items():
            assert isinstance(rows, pd.DataFrame) and list(rows.columns) == COLUMNS, name
            np.testing.assert_array_equal(rows.to_numpy(), expected[name])
            _no_warnings(framed.score_samples, rows)  # sklearn warns on rows without the names seen in fit
        # The decoded rows keep the index of the codes (and so of the rows they came from).
        assert list(got["inverse"].index) == list(frame.index[:5])
    finally:
        framed.set_output(transform="default")


def test_an_array_fit_names_columns_as_scikit_learn_does(inliers):
    detector = quiet_fit(VAEAnomalyDetector(**{**FAST, "max_epochs": 3}), inliers[:100])
    rows = detector.set_output(transform="pandas").sample(2, random_state=0)
    assert list(rows.columns) == [f"x{i}" for i in range(8)]
    assert not hasattr(detector, "feature_names_in_")


# ------------------------------------------------------------ interpolation


def test_interpolate_decodes_the_path_between_the_latent_means(fitted, test_set):
    X, _ = test_set
    z = fitted.transform(X[:2])
    linear = fitted.interpolate(X[0], X[1], n_steps=6, method="linear")
    np.testing.assert_array_equal(linear, fitted.inverse_transform(np.linspace(z[0], z[1], 6)))
    path = fitted.interpolate(X[0], X[1:2])  # slerp, 10 steps; a one-row 2-d array is a row
    assert path.shape == (10, X.shape[1])
    np.testing.assert_array_equal(path[[0, -1]], fitted.inverse_transform(z))  # the rows' reconstructions
    assert not np.allclose(path[1:-1], fitted.interpolate(X[0], X[1], method="linear")[1:-1])


def test_interpolate_takes_rows_of_a_frame_with_their_names(framed, frame):
    # A Series (frame.iloc[0]) or a one-row frame, without the feature-name warning of an array.
    by_name = _no_warnings(framed.interpolate, frame.iloc[0], frame.iloc[[1]], n_steps=4)
    with pytest.warns(UserWarning, match="does not have valid feature names"):
        by_position = framed.interpolate(frame.to_numpy()[0], frame.to_numpy()[1], 4)
    np.testing.assert_array_equal(by_name, by_position)
    with pytest.raises(ValueError, match="same order"):
        framed.interpolate(frame[COLUMNS[::-1]].iloc[0], frame.iloc[1])


@pytest.mark.parametrize("x_b, kwargs, error, message", [
    ("two rows", {}, ValueError, r"x_b must be one row, got shape \(2, 8\)"),
    ("row", {"n_steps": 1}, ValueError, "n_steps must be an integer of at least 2"),
    ("row", {"method": "cubic"}, ValueError, "method must be one of 'slerp', 'linear'"),
    ("short row", {}, ValueError, "X has 7 features"),
])
def test_interpolate_names_bad_arguments(fitted, test_set, x_b, kwargs, error, message):
    X, _ = test_set
    x_b = {"two rows": X[1:3], "row": X[1], "short row": X[1, :7]}[x_b]
    with pytest.raises(error, match=message):
        fitted.interpolate(X[0], x_b, **kwargs)


def test_interpolate_needs_a_fitted_detector():
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        VAEAnomalyDetector().interpolate(np.zeros(2), np.ones(2))


# ---------------------------------------------------- posterior collapse


def _fit_recording(detector, X):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        detector.fit(X)
    return [w for w in caught if w.category is PosteriorCollapseWarning]


def test_latent_usage_of_a_fitted_detector(fitted, inliers):
    # Units used: the variance of E[z_d|x] over the training rows above 0.01.
    variances = np.var(fitted.transform(inliers), axis=0)
    assert fitted.active_units_ == int((variances > 0.01).sum()) >= 2
    assert fitted.kl_per_dim_.shape == (fitted.latent_dim_,) and fitted.kl_per_dim_.dtype == np.float64
    np.testing.assert_allclose(fitted.kl_per_dim_.sum(), fitted.kl_divergence(inliers).mean(), rtol=1e-6)
    # Fitted state only: a clone has none.
    assert not hasattr(clone(fitted), "active_units_")


def test_a_collapsed_posterior_is_diagnosed_and_a_working_one_is_not(inliers):
    # Trained for a fixed number of epochs, which counts as converged.
    X, settings = inliers[:300], {**FAST, "n_iter_no_change": None}
    working = VAEAnomalyDetector(**settings)
    assert _fit_recording(working, X) == []
    assert 2 * working.active_units_ >= working.latent_dim_
    # A KL weight of 50 pushes q(z|x) onto the prior for every row.
    collapsed = VAEAnomalyDetector(**{**settings, "beta": 50.0})
    caught = _fit_recording(collapsed, X)
    assert collapsed.active_units_ == 0 and collapsed.kl_per_dim_.max() < 0.01 < working.kl_per_dim_.max()
    assert len(caught) == 1 and caught[0].filename.endswith("detector.py")
    assert f"only 0 of the {collapsed.latent_dim_} latent units are active" in str(caught[0].message)
    # Filtered by its class, as the warning's docstring says.
    with warnings.catch_warnings(record=True) as quiet:
        warnings.simplefilter("always")
        warnings.simplefilter("ignore", PosteriorCollapseWarning)
        quiet_fit(clone(collapsed), X)
    assert not [w for w in quiet if w.category is PosteriorCollapseWarning]
    # A network stopped by max_epochs is not diagnosed: the ConvergenceWarning asks for more epochs first.
    unfinished = VAEAnomalyDetector(**{**FAST, "beta": 50.0, "n_iter_no_change": 100})
    assert _fit_recording(unfinished, X) == [] and unfinished.active_units_ == 0

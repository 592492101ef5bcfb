"""anomvae.latent: interpolation paths and the posterior-collapse diagnosis."""

import warnings

import numpy as np
import pytest

from anomvae.errors import PosteriorCollapseWarning
from anomvae.latent import ACTIVE_VARIANCE, interpolation_path, latent_usage, one_row, warn_if_collapsed


def test_linear_path_is_evenly_spaced_and_ends_at_the_codes():
    a, b = np.array([1.0, -2.0, 0.5]), np.array([3.0, 0.0, -0.5])
    path = interpolation_path(a, b, 5, "linear")
    assert path.shape == (5, 3)
    np.testing.assert_array_equal(path[[0, -1]], [a, b])
    np.testing.assert_allclose(np.diff(path, axis=0), np.tile((b - a) / 4, (4, 1)))


def test_slerp_follows_the_great_circle():
    a, b = np.array([2.0, 0.0]), np.array([0.0, 2.0])
    path = interpolation_path(a, b, 7)  # slerp is the default
    np.testing.assert_array_equal(path[[0, -1]], [a, b])
    # Codes of one norm keep it (a straight line would pass at norm sqrt(2)),
    # at evenly spaced angles.
    np.testing.assert_allclose(np.linalg.norm(path, axis=1), 2.0)
    np.testing.assert_allclose(np.arctan2(path[:, 1], path[:, 0]), np.linspace(0, np.pi / 2, 7), atol=1e-12)
    # Codes of different norms: the norm moves smoothly between them, never toward 0.
    norms = np.linalg.norm(interpolation_path(a, 3 * b, 9), axis=1)
    assert norms.min() >= 2.0 - 1e-12 and norms.max() <= 6.0 + 1e-12
    # Nearly opposite codes of lengths 1 and 3 (175 degrees): the textbook
    # formula on the raw codes swings out to a norm of 23 and back to 0.3.
    far = 3 * np.array([np.cos(np.radians(175)), np.sin(np.radians(175))])
    norms = np.linalg.norm(interpolation_path(np.array([1.0, 0.0]), far, 21), axis=1)
    np.testing.assert_allclose(norms, np.linspace(1.0, 3.0, 21))


@pytest.mark.parametrize("b", [np.array([2.0, 4.0]), np.array([-1.0, -2.0]), np.zeros(2)])
def test_slerp_between_parallel_codes_or_from_zero_is_linear(b):
    a = np.array([1.0, 2.0])
    np.testing.assert_allclose(interpolation_path(a, b, 4), interpolation_path(a, b, 4, "linear"))


@pytest.mark.parametrize("n_steps, method, message", [
    (1, "slerp", "n_steps must be an integer of at least 2"),
    (2.5, "slerp", "n_steps must be an integer of at least 2"),
    (True, "slerp", "n_steps must be an integer of at least 2"),
    (3, "cubic", "method must be one of 'slerp', 'linear', got 'cubic'"),
    (3, None, "method must be one of"),
])
def test_bad_arguments_are_named(n_steps, method, message):
    with pytest.raises(ValueError, match=message):
        interpolation_path(np.ones(2), np.zeros(2), n_steps, method)


def test_latent_usage_counts_units_whose_mean_varies():
    rng = np.random.RandomState(0)
    # Unit 0 varies (variance about 1), unit 1 barely (1e-4), unit 2 not at all.
    means = np.c_[rng.normal(size=500), 0.01 * rng.normal(size=500), np.full(500, 0.3)]
    kl = rng.rand(500, 3)
    kl_per_dim, active = latent_usage(means, kl)
    assert active == 1 and isinstance(active, int)
    np.testing.assert_allclose(kl_per_dim, kl.mean(axis=0))
    # Burda et al.'s threshold: a variance of 0.01.
    assert ACTIVE_VARIANCE == 0.01
    assert latent_usage(np.c_[[-0.15, 0.15], [-0.05, 0.05]], np.zeros((2, 2)))[1] == 1  # 0.0225 and 0.0025


@pytest.mark.parametrize("active, latent_dim, warns", [(0, 1, True), (1, 3, True), (1, 2, False), (2, 3, False)])
def test_warning_when_more_than_half_the_units_are_inactive(active, latent_dim, warns):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_if_collapsed(np.linspace(0.0, 1.0, latent_dim), active)
    assert [w.category for w in caught] == ([PosteriorCollapseWarning] if warns else [])
    if warns:
        message = str(caught[0].message)
        assert f"only {active} of the {latent_dim} latent units are active" in message and "smaller beta" in message
        assert issubclass(PosteriorCollapseWarning, UserWarning)


def test_one_row_shapes_a_row_for_validation():
    import pandas as pd

    assert one_row([1.0, 2.0], "x_a").shape == (1, 2) and one_row(np.ones((1, 3)), "x_a").shape == (1, 3)
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": [3.0, 4.0]})
    row = one_row(frame.iloc[1], "x_a")
    assert list(row.columns) == ["a", "b"] and row.to_numpy().tolist() == [[2.0, 4.0]]
    assert one_row(frame[:1], "x_b") is not None
    for bad, shape in ((frame, r"\(2, 2\)"), (np.ones((2, 2)), r"\(2, 2\)"), (np.ones((1, 1, 2)), r"\(1, 1, 2\)")):
        with pytest.raises(ValueError, match=f"x_b must be one row, got shape {shape}"):
            one_row(bad, "x_b")

"""anomvae.preprocessing: the Gaussian likelihood's variance floors (``min_variance``
and its per-feature ``"auto"`` rule, the variance of one step of a feature's grid),
standardisation of constant and tiny-unit features, and float32's range."""

import pickle

import numpy as np
import pytest
from conftest import FAST, quiet_fit, with_rare_count
from sklearn.base import clone

import anomvae
from anomvae import VAEAnomalyDetector
from anomvae.persistence import load_for_scoring
from anomvae.preprocessing import DEFAULT_MIN_VARIANCE, FLOAT32_MAX, Standardizer
from anomvae.preprocessing import grid_variance_floor as _grid_variance_floor

# The variance-floor tests' own settings: longer fits than FAST's.
FLOOR_FAST = dict(max_epochs=60, batch_size=32, lr=3e-3, random_state=0)


# ---------------------------------------------------- variance floors


@pytest.fixture(scope="module")
def auto_fit(train):
    return quiet_fit(VAEAnomalyDetector(**FLOOR_FAST), train)


def test_grid_floor_is_a_grid_steps_variance_in_scaled_units():
    rng = np.random.RandomState(0)
    X = np.c_[
        rng.randint(0, 5, size=200) * 2.0,  # values on a grid of step 2
        rng.normal(size=200),  # continuous: gaps far below the floor
        np.full(200, 7.0),  # constant: no gap at all
    ]
    scale = np.array([X[:, 0].std(), X[:, 1].std(), 1.0])
    floor = _grid_variance_floor(X, scale)
    assert floor[0] == pytest.approx((2.0 / scale[0]) ** 2 / 12)
    assert floor[1] == DEFAULT_MIN_VARIANCE and floor[2] == DEFAULT_MIN_VARIANCE
    # float32 input and a single row (no gaps) are handled.
    np.testing.assert_allclose(_grid_variance_floor(X.astype(np.float32), scale), floor, rtol=1e-6)
    np.testing.assert_array_equal(_grid_variance_floor(X[:1], scale), np.full(3, DEFAULT_MIN_VARIANCE))


def test_grid_floor_sees_a_value_that_occurs_once_in_long_data():
    # A count that is 1 in one row of 150,001 and 0 elsewhere: the floor
    # must come from every row, not a sample that could miss the 1.
    X = np.zeros((150_001, 2))
    X[123_457, 0] = 1.0
    X[:, 1] = np.arange(150_001) % 10 == 3  # 1 on every tenth row
    scale = X.std(axis=0)
    np.testing.assert_allclose(_grid_variance_floor(X, scale), (1.0 / scale) ** 2 / 12)


def test_auto_floors_bound_the_learned_variances(auto_fit, train):
    counts = train[:, -1]
    expected = (1.0 / counts.std()) ** 2 / 12
    assert auto_fit.min_variance_.shape == (9,)
    assert auto_fit.min_variance_[-1] == pytest.approx(expected)
    np.testing.assert_array_equal(auto_fit.min_variance_[:-1], DEFAULT_MIN_VARIANCE)
    # The network uses these floors.
    np.testing.assert_array_equal(auto_fit.module_.likelihood.min_variance.numpy(),
                                  auto_fit.min_variance_.astype(np.float32))


def test_a_float_floor_applies_to_every_feature(train):
    detector = quiet_fit(VAEAnomalyDetector(**{**FLOOR_FAST, "max_epochs": 2}, min_variance=0.05), train)
    np.testing.assert_array_equal(detector.min_variance_, np.full(9, 0.05))
    np.testing.assert_array_equal(detector.module_.likelihood.min_variance.numpy(), np.full(9, 0.05, np.float32))


def test_other_likelihoods_have_no_floor():
    X = np.random.RandomState(0).rand(100, 4)
    detector = quiet_fit(VAEAnomalyDetector(likelihood="bernoulli", max_epochs=1, random_state=0), X)
    assert detector.min_variance_ is None


@pytest.mark.parametrize("bad", [0.0, -1.0, "high"])
def test_bad_floor_is_rejected(train, bad):
    with pytest.raises(ValueError, match="min_variance"):
        VAEAnomalyDetector(min_variance=bad).fit(train)


def test_a_rare_count_does_not_dominate_the_score(auto_fit, train):
    # Normal rows whose count is 1, as in 2% of the training rows: with the
    # fixed 1e-3 floor the count's learned variance collapses and a single
    # 1 costs them many nats; the grid floor keeps them near ordinary rows.
    test = with_rare_count(300, seed=1)
    test[:, -1] = 0.0
    test[:20, -1] = 1.0
    fixed = quiet_fit(VAEAnomalyDetector(**FLOOR_FAST, min_variance=1e-3), train)
    auto_gap = np.median(-auto_fit.score_samples(test[:20])) - np.median(-auto_fit.score_samples(test[20:]))
    fixed_gap = np.median(-fixed.score_samples(test[:20])) - np.median(-fixed.score_samples(test[20:]))
    assert fixed_gap > auto_gap + 3.0


def test_floors_survive_pickling_and_clone(auto_fit, train):
    copy = pickle.loads(pickle.dumps(auto_fit))
    np.testing.assert_array_equal(copy.min_variance_, auto_fit.min_variance_)
    np.testing.assert_array_equal(copy.score_samples(train), auto_fit.score_samples(train))
    assert clone(auto_fit).get_params()["min_variance"] == "auto"


def test_floors_survive_a_model_file(auto_fit, train, tmp_path):
    path = tmp_path / "m.anomvae"
    anomvae.save(auto_fit, path)
    loaded = anomvae.load(path)
    np.testing.assert_array_equal(loaded.min_variance_, auto_fit.min_variance_)
    assert loaded.get_params() == auto_fit.get_params()
    np.testing.assert_array_equal(loaded.score_samples(train), auto_fit.score_samples(train))
    np.testing.assert_array_equal(load_for_scoring(path).score_samples(train), auto_fit.score_samples(train))


# -------------------------------- standardisation and float32's range


def test_constant_feature_is_scored_finitely(inliers):
    X = np.column_stack([inliers, np.full(len(inliers), 7.0)])
    detector = quiet_fit(VAEAnomalyDetector(**FAST), X)
    assert detector.scale_[-1] == 1.0
    shifted = X[:5].copy()
    shifted[:, -1] = 8.0
    scores = detector.score_samples(np.vstack([X[:5], shifted]))
    assert np.isfinite(scores).all()
    assert (scores[5:] < scores[:5] - 0.1).all()


@pytest.mark.parametrize("unit", [1.0, 1e-13])
def test_a_feature_in_tiny_units_is_scaled_not_dropped(inliers, unit):
    # The same data, one feature written in units 1e13 times smaller: its
    # spread is real, and a row 100 spreads out on it must still stand out.
    X = inliers.copy()
    X[:, 0] = (1 + 0.1 * np.random.RandomState(3).normal(size=len(X))) * unit
    detector = quiet_fit(VAEAnomalyDetector(**FAST), X)
    assert detector.scale_[0] == pytest.approx(X[:, 0].std(), rel=1e-9)
    far = X[:3].copy()
    far[:, 0] = 100 * unit
    assert (detector.predict(far) == -1).all()


def test_rounding_noise_on_a_constant_feature_is_not_a_spread(inliers):
    X = np.column_stack([inliers, np.full(len(inliers), 0.1) * 3])  # 0.30000000000000004 everywhere
    X[::2, -1] = 0.3  # and 0.3: differences of one unit in the last place
    detector = quiet_fit(VAEAnomalyDetector(**{**FAST, "max_epochs": 2}), X)
    assert detector.scale_[-1] == 1.0


@pytest.mark.parametrize("value", [3.5e38, 1e300])
def test_values_beyond_float32_are_an_error_not_a_nan_score(inliers, value):
    detector = quiet_fit(VAEAnomalyDetector(**{**FAST, "max_epochs": 2}), inliers)
    row = inliers[:1].copy()
    row[0, 2] = value
    with pytest.raises(ValueError, match=r"X\[0, 2\] = .* too large for the model"):
        detector.score_samples(row)
    with pytest.raises(ValueError, match=rf"X\[{len(inliers)}, 2\] = .* too large for the model"):
        VAEAnomalyDetector(**FAST).fit(np.vstack([inliers, row]))


def test_standardizer_fit_scales_or_leaves_alone():
    X = np.array([[1.0, 5.0, 0.0], [3.0, 5.0, 1e-13], [5.0, 5.0, 2e-13]])
    scaled = Standardizer.fit(X, standardize=True, likelihood="gaussian")
    np.testing.assert_array_equal(scaled.center, X.mean(axis=0))
    # A constant feature keeps scale 1; a tiny-unit one is scaled like any other.
    assert scaled.scale[1] == 1.0 and scaled.scale[2] == pytest.approx(X[:, 2].std())
    assert scaled.log_jacobian == pytest.approx(-np.log(scaled.scale).sum())
    plain = Standardizer.fit(X, standardize=False, likelihood="bernoulli")
    np.testing.assert_array_equal(plain.center, 0.0)
    np.testing.assert_array_equal(plain.scale, 1.0)
    assert plain.log_jacobian == 0.0 and plain.transform(X).dtype == np.float32


@pytest.mark.parametrize("likelihood, value, reason", [
    ("gaussian", np.nan, "empty or NaN value in column 'b'"),
    ("gaussian", np.inf, "infinite value in column 'b'"),
    ("gaussian", 1e300, "value 1e+300 in column 'b' beyond float32's range"),
    ("bernoulli", 1.5, "value 1.5 in column 'b' outside [0, 1], which likelihood='bernoulli' needs"),
    ("continuous_bernoulli", -0.5,
     "value -0.5 in column 'b' outside [0, 1], which likelihood='continuous_bernoulli' needs"),
])
def test_unusable_rows_names_the_first_bad_value(likelihood, value, reason):
    X = np.full((4, 3), 0.5)
    X[2, 1] = value
    mask, reasons = Standardizer.identity(3, likelihood).unusable_rows(X, ["a", "b", "c"])
    assert mask.tolist() == [False, False, True, False] and reasons == [reason]


def test_a_value_in_range_leaves_it_once_standardised():
    X = np.array([[3.3e38, 0.0], [0.0, 0.0]])
    standardizer = Standardizer(np.zeros(2), np.array([0.5, 1.0]))
    mask, reasons = standardizer.unusable_rows(X, ["a", "b"])
    assert mask.tolist() == [True, False]
    assert reasons == ["value 3.3e+38 in column 'a' beyond float32's range once standardised"]
    with pytest.raises(ValueError, match=r"X\[0, 0\] = .* once standardised"):
        standardizer.transform(X)
    assert 3.3e38 < FLOAT32_MAX


def test_the_gaussian_likelihood_has_no_domain():
    X = np.array([[-7.0, 12.0]])
    standardizer = Standardizer.identity(2, "gaussian")
    assert not standardizer.unusable_rows(X, ["a", "b"])[0].any()
    standardizer.check(X)
    with pytest.raises(ValueError, match=r"needs values in \[0, 1\]; column 0"):
        Standardizer.identity(2, "bernoulli").check(X)

"""The Gaussian likelihood's variance floor: ``min_variance`` and its
per-feature ``"auto"`` rule (the variance of one step of a feature's grid)."""

import pickle
from pathlib import Path

import numpy as np
import pytest
from conftest import make_low_rank, quiet_fit
from sklearn.base import clone

import anomvae
from anomvae import VAEAnomalyDetector
from anomvae.persistence import load_for_scoring
from anomvae.preprocessing import DEFAULT_MIN_VARIANCE
from anomvae.preprocessing import grid_variance_floor as _grid_variance_floor

FAST = dict(max_epochs=60, batch_size=32, lr=3e-3, random_state=0)


def with_rare_count(n_samples, seed):
    """Low-rank continuous rows plus a last feature that is a count, 1 in
    about 2% of the rows and 0 in the rest."""
    rng = np.random.RandomState(seed)
    counts = (rng.rand(n_samples) < 0.02).astype(float)
    return np.c_[make_low_rank(n_samples, seed=seed), counts]


@pytest.fixture(scope="module")
def train():
    return with_rare_count(600, seed=0)


@pytest.fixture(scope="module")
def auto_fit(train):
    return quiet_fit(VAEAnomalyDetector(**FAST), train)


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
    detector = quiet_fit(VAEAnomalyDetector(**{**FAST, "max_epochs": 2}, min_variance=0.05), train)
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
    fixed = quiet_fit(VAEAnomalyDetector(**FAST, min_variance=1e-3), train)
    auto_gap = np.median(-auto_fit.score_samples(test[:20])) - np.median(-auto_fit.score_samples(test[20:]))
    fixed_gap = np.median(-fixed.score_samples(test[:20])) - np.median(-fixed.score_samples(test[20:]))
    assert fixed_gap > auto_gap + 3.0


def test_floors_survive_pickling_and_clone(auto_fit, train):
    copy = pickle.loads(pickle.dumps(auto_fit))
    np.testing.assert_array_equal(copy.min_variance_, auto_fit.min_variance_)
    np.testing.assert_array_equal(copy.score_samples(train), auto_fit.score_samples(train))
    assert clone(auto_fit).get_params()["min_variance"] == "auto"


def test_pickles_from_before_min_variance_keep_their_single_floor(train):
    # Such pickles have neither the parameter nor min_variance_, and one
    # floor, 1e-3, in the network's configuration.
    X = make_low_rank(300)
    detector = quiet_fit(VAEAnomalyDetector(**{**FAST, "max_epochs": 5}), X)
    state = detector.__getstate__()
    del state["min_variance"], state["min_variance_"], state["trim_by"]
    # Such pickles also kept the network's configuration and history as dicts.
    state["_module_config"] = state.pop("network_config_").to_dict()
    state["_module_config"]["min_variance"] = DEFAULT_MIN_VARIANCE
    state["history_"] = state["history_"].to_dict()
    old = VAEAnomalyDetector.__new__(VAEAnomalyDetector)
    old.__setstate__(state)
    assert old.get_params()["min_variance"] == DEFAULT_MIN_VARIANCE
    np.testing.assert_array_equal(old.min_variance_, np.full(8, DEFAULT_MIN_VARIANCE))
    np.testing.assert_array_equal(old.score_samples(X), detector.score_samples(X))
    assert clone(old).get_params()["min_variance"] == DEFAULT_MIN_VARIANCE
    # They trimmed by the loss, which trim_by now names.
    assert old.get_params()["trim_by"] == "loss" and detector.get_params()["trim_by"] == "kl"


def test_floors_survive_a_model_file(auto_fit, train, tmp_path):
    path = tmp_path / "m.anomvae"
    anomvae.save(auto_fit, path)
    loaded = anomvae.load(path)
    np.testing.assert_array_equal(loaded.min_variance_, auto_fit.min_variance_)
    assert loaded.get_params() == auto_fit.get_params()
    np.testing.assert_array_equal(loaded.score_samples(train), auto_fit.score_samples(train))
    np.testing.assert_array_equal(load_for_scoring(path).score_samples(train), auto_fit.score_samples(train))


DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_model_files_written_by_format_1_anomvae_score_as_they_did(likelihood):
    # Written by anomvae at commit ebd2c86 (model format 1), with the
    # scores it gave; the Gaussian one has a feature on a grid of step 1,
    # for which "auto" would now choose a floor above the file's 1e-3.
    expected = np.load(DATA / "format1-expected.npz")
    X = expected["X"] if likelihood == "gaussian" else expected["B"]
    path = DATA / f"format1-{likelihood}.anomvae"
    detector = anomvae.load(path)
    np.testing.assert_array_equal(detector.score_samples(X), expected[f"{likelihood}_scores"])
    np.testing.assert_array_equal(load_for_scoring(path).score_samples(X), expected[f"{likelihood}_scores"])
    assert detector.get_params()["trim_by"] == "loss"
    if likelihood == "gaussian":
        assert detector.get_params()["min_variance"] == DEFAULT_MIN_VARIANCE
        np.testing.assert_array_equal(detector.min_variance_, np.full(4, DEFAULT_MIN_VARIANCE))
        assert _grid_variance_floor(X, detector.scale_)[0] > DEFAULT_MIN_VARIANCE
    else:
        assert detector.get_params()["min_variance"] == "auto" and detector.min_variance_ is None

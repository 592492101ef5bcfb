"""refit_inliers: a second network trained without the rows the first flags.

When "auto" refits (training.refit_rows) is tested in test_training.py; what
fit and info say of a refit, in test_cli_fit.py and test_cli_info.py."""

import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import REFIT_FAST as FAST
from conftest import quiet_fit
from sklearn.exceptions import ConvergenceWarning

import anomvae
from anomvae import VAEAnomalyDetector
from anomvae.persistence import load_for_scoring


@pytest.fixture(scope="module")
def refitted(contaminated):
    return quiet_fit(VAEAnomalyDetector(refit_inliers=True, **FAST), contaminated[0])


@pytest.fixture(scope="module")
def first(contaminated):
    return quiet_fit(VAEAnomalyDetector(**FAST), contaminated[0])


def test_refit_is_a_fit_on_the_rows_the_first_fit_keeps(contaminated, first, refitted):
    X, _ = contaminated
    keep = first.predict(X) == 1
    assert refitted.n_refit_excluded_ == (~keep).sum() > 0 and first.n_refit_excluded_ is None
    on_kept = quiet_fit(VAEAnomalyDetector(**FAST), X[keep])
    np.testing.assert_array_equal(refitted.score_samples(X), on_kept.score_samples(X))
    assert refitted.history_ == on_kept.history_
    # The threshold is Tukey's fence over every training row, the left-out ones included.
    q1, q3 = np.percentile(-refitted.score_samples(X), [25, 75])
    assert refitted.threshold_ == pytest.approx(q3 + 1.5 * (q3 - q1), rel=1e-12)
    assert refitted.threshold_ != on_kept.threshold_


def test_refit_leaves_out_rows_rich_in_planted_outliers(contaminated, first, refitted):
    # What the refit gains is measured on ODDS (docs/benchmarks.md); here,
    # only that the rows it leaves out (those the first network flags, as
    # the test above pins) are rich in planted outliers.
    X, planted = contaminated
    flagged = first.predict(X) == -1
    assert refitted.n_refit_excluded_ == flagged.sum()
    # Many of the planted outliers are left out, and they are many times more common
    # among the rows left out than in the training data (4.8%).
    assert flagged[planted].mean() >= 0.4 and planted[flagged].mean() > 5 * planted.mean()


def test_refit_with_a_contamination_rate_leaves_out_that_share(contaminated):
    X, _ = contaminated
    detector = quiet_fit(VAEAnomalyDetector(refit_inliers=True, contamination=0.1, **FAST), X)
    assert detector.n_refit_excluded_ == pytest.approx(0.1 * len(X), abs=1)
    assert (detector.predict(X) == -1).mean() == pytest.approx(0.1, abs=1 / len(X))


def test_nothing_flagged_means_no_refit(inliers, monkeypatch):
    # A threshold no training row exceeds: the first network is kept.
    monkeypatch.setattr("anomvae.calibration.contamination_threshold", lambda scores, contamination: np.inf)
    detector = quiet_fit(VAEAnomalyDetector(refit_inliers=True, **FAST), inliers[:100])
    plain = quiet_fit(VAEAnomalyDetector(**FAST), inliers[:100])
    assert detector.n_refit_excluded_ == 0 and plain.n_refit_excluded_ is None
    np.testing.assert_array_equal(detector.score_samples(inliers), plain.score_samples(inliers))


def test_refit_count_survives_a_model_file(refitted, contaminated, tmp_path):
    path = tmp_path / "m.anomvae"
    anomvae.save(refitted, path)
    loaded = anomvae.load(path)
    assert loaded.n_refit_excluded_ == refitted.n_refit_excluded_ and loaded.get_params()["refit_inliers"] is True
    np.testing.assert_array_equal(load_for_scoring(path).score_samples(contaminated[0]),
                                  refitted.score_samples(contaminated[0]))


def test_bad_refit_value_is_named(inliers):
    with pytest.raises(ValueError, match="refit_inliers"):
        VAEAnomalyDetector(refit_inliers="always").fit(inliers)


def _convergence_warnings(detector, X):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        detector.fit(X)
    return [w for w in caught if issubclass(w.category, ConvergenceWarning)]


def test_convergence_warnings_say_which_network(contaminated, inliers, monkeypatch):
    # FAST stops at max_epochs before the patience of 20 runs out: each network warns once.
    X, _ = contaminated
    both = _convergence_warnings(VAEAnomalyDetector(refit_inliers=True, **FAST), X)
    plain = _convergence_warnings(VAEAnomalyDetector(**FAST), X)
    assert len(both) == 2 and len(plain) == 1
    first, second = (str(w.message) for w in both)
    assert "improving (first network, before the refit_inliers refit); consider" in first
    assert second == str(plain[0].message) and "first network" not in second
    # Said from anomvae's own code, where module filters look for it.
    assert all(Path(w.filename).name == "detector.py" for w in both + plain)
    # No refit after all: the one network's warning, as it is.
    monkeypatch.setattr("anomvae.calibration.contamination_threshold", lambda scores, contamination: np.inf)
    kept = _convergence_warnings(VAEAnomalyDetector(refit_inliers=True, **FAST), inliers[:100])
    assert [str(w.message) for w in kept] == [second]


def test_a_filter_on_the_message_hides_both_networks_warnings(contaminated):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", message="VAEAnomalyDetector reached max_epochs")
        VAEAnomalyDetector(refit_inliers=True, **FAST).fit(contaminated[0])
    assert not [w for w in caught if issubclass(w.category, ConvergenceWarning)]

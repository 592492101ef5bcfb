"""anomvae.calibration: the contamination threshold set at fit, conformal
thresholds and p-values from reference rows, thinning of stored scores,
and the score-shift test."""

import math
import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import FAST, quiet_fit
from conftest import draw_rows as draw
from sklearn.exceptions import ConvergenceWarning, NotFittedError

import anomvae
from anomvae import VAEAnomalyDetector
from anomvae.calibration import score_shift
from anomvae.calibration import subsample_sorted as _subsample_sorted

# -------------------------------------------- contamination threshold


def test_auto_threshold_is_tukeys_fence_on_training_scores(fitted, inliers):
    anomaly = -fitted.score_samples(inliers)
    q1, q3 = np.percentile(anomaly, [25, 75])
    assert fitted.threshold_ == pytest.approx(q3 + 1.5 * (q3 - q1))


@pytest.mark.parametrize("contamination", [0.05, 0.2])
def test_contamination_sets_training_flag_rate(inliers, contamination):
    detector = quiet_fit(VAEAnomalyDetector(contamination=contamination, **FAST), inliers)
    assert np.mean(detector.predict(inliers) == -1) == pytest.approx(contamination, abs=1 / len(inliers))
    np.testing.assert_array_equal(detector.fit_predict(inliers), detector.predict(inliers))


# ---------------------------------------------- conformal calibration


def calibrated(detector, X, fpr):
    return pickle.loads(pickle.dumps(detector)).calibrate(X, fpr=fpr)


@pytest.mark.parametrize("fpr", [0.01, 0.05, 0.2])
def test_realized_false_alarm_rate_matches_fpr(detector, fpr):
    n_ref, n_new = 999, 20_000
    model = calibrated(detector, draw(n_ref, seed=2), fpr)
    realized = np.mean(model.predict(draw(n_new, seed=3)) == -1)
    # The rate given one calibration set is Beta-distributed around
    # (n_ref + 1 - k) / (n_ref + 1), within 1 / (n_ref + 1) below fpr; add the
    # binomial noise of the n_new rows measured.
    sd = math.sqrt(fpr * (1 - fpr) * (1 / (n_ref + 2) + 1 / n_new))
    assert abs(realized - fpr) < 4 * sd + 1 / (n_ref + 1), realized


def test_finite_sample_correction_on_small_reference_sets(detector):
    # With n = 10 reference rows and fpr = 0.1 the rule picks k = 10 (the
    # maximum), whose expected false-alarm rate is exactly 1/11; the
    # uncorrected k = ceil(n * (1 - fpr)) = 9 would give 2/11. Averaging
    # over many calibration sets separates the two.
    n_ref, n_sets, fpr = 10, 100, 0.1
    pool = draw(n_ref * n_sets, seed=4)
    new_scores = -detector.score_samples(draw(4000, seed=5))
    rates = []
    model = pickle.loads(pickle.dumps(detector))
    for start in range(0, len(pool), n_ref):
        model.calibrate(pool.iloc[start:start + n_ref], fpr=fpr)
        rates.append(np.mean(new_scores > model.threshold_))
    mean, se = np.mean(rates), np.std(rates) / math.sqrt(n_sets)
    assert abs(mean - 1 / 11) < 4 * se
    assert abs(mean - 2 / 11) > 6 * se


@pytest.mark.parametrize("n_ref, fpr, k", [(99, 0.01, 99), (100, 0.01, 100), (19, 0.05, 19),
                                           (19, 0.1, 18), (50, 0.2, 41), (9, 0.5, 5)])
def test_threshold_is_the_kth_smallest_reference_score(detector, n_ref, fpr, k):
    X = draw(n_ref, seed=6)
    assert k == math.ceil((n_ref + 1) * (1 - fpr) - 1e-9)
    model = calibrated(detector, X, fpr)
    reference = np.sort(-detector.score_samples(X))
    assert model.threshold_ == reference[k - 1] == -model.offset_
    np.testing.assert_array_equal(model.reference_scores_, reference)
    assert model.calibration_fpr_ == fpr
    np.testing.assert_array_equal(model.decision_function(X), model.score_samples(X) - model.offset_)


@pytest.mark.parametrize("n_ref, fpr", [(99, 0.01), (100, 0.01), (19, 0.05), (19, 0.1), (39, 0.2),
                                        (50, 0.2), (57, 0.13), (9, 0.5)])
def test_p_value_at_most_fpr_exactly_when_flagged(detector, n_ref, fpr):
    # A third of the reference rows twice over makes ties among the reference
    # scores, and scoring the reference rows themselves puts rows exactly on
    # the threshold.
    base = draw(n_ref // 3, seed=7)
    reference = pd.concat([base, base, draw(n_ref, seed=21)]).iloc[:n_ref]
    model = calibrated(detector, reference, fpr)
    X = pd.concat([reference, draw(300, seed=8)])
    p = model.p_values(X)
    assert np.any(-model.score_samples(X) == model.threshold_)
    np.testing.assert_array_equal(p <= fpr, model.predict(X) == -1)
    scores, ref = -model.score_samples(X), model.reference_scores_
    brute = np.array([(1 + np.sum(ref >= s)) / (len(ref) + 1) for s in scores])
    np.testing.assert_array_equal(p, brute)
    assert p.min() >= 1 / (n_ref + 1) and p.max() <= 1


def test_calibration_errors_and_reset(detector):
    with pytest.raises(NotFittedError, match="calibrate"):
        detector.p_values(draw(3, seed=9))
    with pytest.raises(ValueError, match="needs at least 99 reference rows, got 50"):
        calibrated(detector, draw(50, seed=9), 0.01)
    for bad in (0, 1, -0.1, 1.5, "0.1", True):
        with pytest.raises(ValueError, match="fpr must be"):
            calibrated(detector, draw(50, seed=9), bad)
    with pytest.raises(ValueError, match="feature names"):
        calibrated(detector, draw(50, seed=9).iloc[:, :3], 0.1)
    model = calibrated(detector, draw(200, seed=9), 0.05)
    assert model.threshold_ != detector.threshold_
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.set_params(max_epochs=2).fit(draw(100, seed=10))
    assert model.reference_scores_ is None and model.calibration_fpr_ is None
    with pytest.raises(NotFittedError, match="calibrate"):
        model.p_values(draw(3, seed=9))


def test_training_scores_are_stored_thinned_and_sorted(detector):
    np.testing.assert_allclose(detector.training_scores_, np.sort(-detector.score_samples(draw(500, seed=1))))
    values = np.random.RandomState(0).normal(size=5001)
    thinned = _subsample_sorted(values, 2000)
    assert thinned.shape == (2000,) and np.all(np.diff(thinned) >= 0)
    assert thinned[0] == values.min() and thinned[-1] == values.max()
    np.testing.assert_array_equal(_subsample_sorted(values[:10], 2000), np.sort(values[:10]))


def test_calibration_survives_save_load_and_pickle(detector, tmp_path):
    model = calibrated(detector, draw(200, seed=11), 0.05)
    X = draw(50, seed=12)
    anomvae.save(model, tmp_path / "m.anomvae")
    for copy in (anomvae.load(tmp_path / "m.anomvae"), pickle.loads(pickle.dumps(model))):
        np.testing.assert_array_equal(copy.training_scores_, model.training_scores_)
        np.testing.assert_array_equal(copy.reference_scores_, model.reference_scores_)
        assert copy.calibration_fpr_ == 0.05 and copy.threshold_ == model.threshold_
        np.testing.assert_array_equal(copy.p_values(X), model.p_values(X))
    anomvae.save(detector, tmp_path / "plain.anomvae")
    assert anomvae.load(tmp_path / "plain.anomvae").reference_scores_ is None


# -------------------------------------------------------- score shift


def test_score_shift_flags_a_shifted_batch_only(detector):
    model = calibrated(detector, draw(500, seed=19), 0.05)
    baselines = dict(reference_scores=model.reference_scores_, training_scores=model.training_scores_)
    same = score_shift(-model.score_samples(draw(500, seed=20)), **baselines)
    moved = score_shift(-model.score_samples(draw(500, seed=20) * 1.5), **baselines)
    assert same.baseline == "calibration" and same.n_baseline == 500 and same.n_batch == 500
    assert not same.shifted and same.ks_p_value > 0.01
    assert moved.shifted and moved.ks_p_value < 1e-6 and moved.ks_statistic > same.ks_statistic
    assert score_shift([], **baselines) is None

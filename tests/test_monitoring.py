"""Calibrated thresholds, conformal p-values, feature contributions and the
monitoring summary of the streaming scorer."""

import io
import math
import pickle
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import make_low_rank
from sklearn.exceptions import ConvergenceWarning, NotFittedError

import anomvae
from anomvae import VAEAnomalyDetector
from anomvae.calibration import score_shift
from anomvae.calibration import subsample_sorted as _subsample_sorted
from anomvae.explain import explain
from anomvae.results import TopScores as _TopScores
from anomvae.scoring import score_csv

FEATURES = ["a", "b", "c", "d", "e"]


def draw(n, seed):
    """Independent rows (one per seed) of one fixed distribution: a noisy 2-d subspace."""
    return pd.DataFrame(make_low_rank(n, len(FEATURES), rank=2, noise=0.2, seed=seed, basis_seed=123),
                        columns=FEATURES)


@pytest.fixture(scope="module")
def detector():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return VAEAnomalyDetector(hidden_dims=(16,), max_epochs=30, batch_size=64, lr=3e-3,
                                  random_state=0).fit(draw(500, seed=1))


def calibrated(detector, X, fpr):
    return pickle.loads(pickle.dumps(detector)).calibrate(X, fpr=fpr)


# ------------------------------------------------------------- calibration


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


# ------------------------------------------------------------ explanation


def test_contributions_and_kl_add_up_to_the_anomaly_score(detector):
    X = pd.concat([draw(40, seed=13), draw(5, seed=14) * 4])
    contributions, kl = detector.feature_contributions(X), detector.kl_divergence(X)
    assert contributions.shape == (45, len(FEATURES)) and contributions.dtype == np.float64
    assert np.all(kl >= 0)
    np.testing.assert_allclose(contributions.sum(1) + kl, -detector.score_samples(X), rtol=1e-5, atol=1e-4)


def test_contributions_do_not_depend_on_the_batch(detector):
    X = draw(70, seed=15)
    together = detector.feature_contributions(X)
    alone = np.vstack([detector.feature_contributions(X.iloc[[i]]) for i in (0, 33, 69)])
    np.testing.assert_array_equal(alone, together[[0, 33, 69]])


@pytest.mark.parametrize("column", [0, 2, 4])
def test_planted_anomaly_column_ranks_first(detector, column):
    X = draw(20, seed=16)
    X.iloc[:, column] += 8 * X.iloc[:, column].std()
    contributions = detector.feature_contributions(X)
    assert np.all(np.argmax(contributions, axis=1) == column)
    explained = explain(detector, X, 2)
    assert all(items[0]["feature"] == FEATURES[column] for items in explained)
    first = explained[0][0]
    assert first["observed"] == X.iloc[0, column]
    reconstructed = detector.inverse_transform(detector.transform(X.iloc[[0]]))[0, column]
    assert first["reconstructed"] == reconstructed and first["contribution"] == contributions[0, column]


# ------------------------------------------------------ monitoring summary


def _csv(frame):
    path = io.StringIO()
    frame.to_csv(path, index=False)
    return path.getvalue()


def test_summary_top_anomalies_match_a_full_sort(detector, tmp_path):
    X = pd.concat([draw(230, seed=17), draw(7, seed=18) * 3], ignore_index=True)
    path = tmp_path / "batch.csv"
    X.to_csv(path, index=False)
    out = io.StringIO()
    summary = score_csv(detector, str(path), out, chunk_size=16, summary_top=5)
    scores = -detector.score_samples(X)
    best = np.argsort(-scores, kind="stable")[:5]
    assert [t["row"] for t in summary.top_anomalies] == list(best + 1)
    assert [t["anomaly_score"] for t in summary.top_anomalies] == list(scores[best])
    assert summary.rows == summary.rows_scored == 237
    assert summary.anomalies == int(np.sum(scores > detector.threshold_))
    assert summary.score_shift.baseline == "training"


def _top_rows(chunks, size):
    top, start = _TopScores(size), 0
    for scores in chunks:
        scores = np.asarray(scores, dtype=float)
        rows = np.arange(start, start + len(scores)) + 1
        top.add(scores, rows, lambda i, rows=rows: {"row": int(rows[i])})
        start += len(scores)
    return [(t["row"], t["anomaly_score"]) for t in top.result()]


def _reference_top(chunks, size):
    scores = np.concatenate([np.asarray(c, dtype=float) for c in chunks])
    order = [i for i in np.argsort(-scores, kind="stable") if not np.isnan(scores[i])][:size]
    return [(int(i) + 1, float(scores[i])) for i in order]


@pytest.mark.parametrize("chunks, size", [
    ([[5, 1, 5, 5, 2, 5], [5, 9, 5]], 3),          # ties straddle the cut, within and across chunks
    ([[3, 1], [2, 8, 0, 8, 8], [1]], 4),           # chunks shorter than the top size
    ([[np.nan, 4, np.nan, 7], [np.nan] * 5 + [6, 1]], 3),   # NaN never enters, nor blocks others
    ([[np.nan] * 4, [2, 3]], 2),
    ([[1, 2, 3]], 0),
])
def test_top_scores_keep_the_highest_and_earliest(chunks, size):
    assert _top_rows(chunks, size) == _reference_top(chunks, size)


def test_rows_whose_score_is_nan_are_named_or_marked(detector, tmp_path, monkeypatch):
    from anomvae.errors import DataError

    X = draw(40, seed=21)
    path = tmp_path / "batch.csv"
    X.to_csv(path, index=False)
    real = detector.score_samples

    def nan_for_row_3(frame):
        scores = real(frame)
        scores[3] = np.nan
        return scores

    monkeypatch.setattr(detector, "score_samples", nan_for_row_3)
    with pytest.raises(DataError, match=r"1 row\(s\) cannot be scored, line\(s\) 5: .*NaN"):
        score_csv(detector, str(path), io.StringIO(), chunk_size=100)
    out = io.StringIO()
    summary = score_csv(detector, str(path), out, chunk_size=100, mark_invalid=True)
    table = pd.read_csv(io.StringIO(out.getvalue()))
    assert len(table) == 40 and summary.rows_not_scored == 1 and summary.rows_scored == 39
    assert table.loc[3, "status"].startswith("not scored: its anomaly score is NaN")
    assert np.isnan(table.loc[3, "anomaly_score"]) and np.isnan(table.loc[3, "is_anomaly"])
    assert (table.drop(index=3)["status"] == "scored").all()


def test_id_values_that_need_quoting_survive_the_csv_output(detector, tmp_path):
    X = draw(6, seed=22)
    ids = ["plain", "a,b", 'say "hi"', "two\nlines", "", "x"]
    frame = X.assign(name=ids)
    path = tmp_path / "batch.csv"
    frame.to_csv(path, index=False)
    out = io.StringIO()
    score_csv(detector, str(path), out, id_columns=["name"], chunk_size=4)
    table = pd.read_csv(io.StringIO(out.getvalue()), dtype={"name": str}, keep_default_na=False)
    assert list(table["name"]) == ids
    assert len(table) == 6


def test_score_shift_flags_a_shifted_batch_only(detector):
    model = calibrated(detector, draw(500, seed=19), 0.05)
    baselines = dict(reference_scores=model.reference_scores_, training_scores=model.training_scores_)
    same = score_shift(-model.score_samples(draw(500, seed=20)), **baselines)
    moved = score_shift(-model.score_samples(draw(500, seed=20) * 1.5), **baselines)
    assert same.baseline == "calibration" and same.n_baseline == 500 and same.n_batch == 500
    assert not same.shifted and same.ks_p_value > 0.01
    assert moved.shifted and moved.ks_p_value < 1e-6 and moved.ks_statistic > same.ks_statistic
    assert score_shift([], **baselines) is None

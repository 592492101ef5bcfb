"""anomvae.results: the summary of a scoring run, its top anomalies (TopScores),
and values that need quoting in the CSV output."""

import io

import numpy as np
import pandas as pd
import pytest
from conftest import draw_rows as draw

from anomvae.results import TopScores as _TopScores
from anomvae.scoring import score_csv


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

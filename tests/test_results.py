"""anomvae.results: the summary of a scoring run, its top anomalies (TopScores),
and values that need quoting in the CSV output."""

import io
import json

import numpy as np
import pandas as pd
import pytest
from conftest import draw_rows as draw

from anomvae.errors import DataError
from anomvae.results import OUTPUT_COLUMNS, ResultWriter, ScoringSummary, check_id_columns, json_safe
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


def _strict_json(text):
    def refuse(constant):
        raise ValueError(f"not standard JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


def _written(fmt, scores, valid):
    out = io.StringIO()
    summary = ScoringSummary(threshold=1.0)
    ResultWriter(out, summary, fmt=fmt).write({"row": np.arange(1, len(scores) + 1)}, np.asarray(scores), valid,
                                              ["not scored"] * int((~valid).sum()))
    return out.getvalue(), summary


def test_infinite_scores_are_written_alike_in_csv_jsonl_and_the_summary():
    scores, valid = [0.5, np.inf, np.nan, 2.0], np.array([True, True, False, True])
    text, summary = _written("csv", scores, valid)
    assert text.splitlines()[1:] == ["1,0.5,false", "2,inf,true", "3,,", "4,2.0,true"]
    text, _ = _written("jsonl", scores, valid)
    records = [_strict_json(line) for line in text.splitlines()]
    assert [r["anomaly_score"] for r in records] == [0.5, "inf", None, 2.0]
    assert [r["is_anomaly"] for r in records] == [False, True, None, True]
    summary.top_anomalies = [{"row": 2, "anomaly_score": np.inf}]
    values = _strict_json(json.dumps(summary.to_dict(), allow_nan=False))
    assert values["max_score"] == "inf" and values["top_anomalies"][0]["anomaly_score"] == "inf"
    assert json_safe({"a": [np.float64(-np.inf), float("nan"), np.int64(3)]}) == {"a": ["-inf", "nan", 3]}


@pytest.mark.parametrize("column", OUTPUT_COLUMNS)
def test_id_columns_may_not_take_an_output_column_name(column):
    with pytest.raises(DataError, match=f"the id column '{column}' has the name of a column that score writes"):
        check_id_columns(["id", column])
    check_id_columns(["id", "row", "path"])


@pytest.mark.parametrize("only_anomalies", [False, True])
def test_the_writer_says_where_each_row_went(only_anomalies):
    out = io.StringIO()
    writer = ResultWriter(out, ScoringSummary(threshold=1.0), only_anomalies=only_anomalies, mark_invalid=True)
    positions = [writer.write({"row": rows}, np.asarray(scores), np.isfinite(scores), reasons)
                 for rows, scores, reasons in (([1, 2, 3], [0.5, 2.0, np.nan], ["bad"]), ([4, 5], [3.0, 0.1], []))]
    written = pd.read_csv(io.StringIO(out.getvalue()))["row"].tolist()
    if only_anomalies:
        assert [p.tolist() for p in positions] == [[0, 1, 2], [3, 0]] and written == [2, 3, 4]
    else:
        assert [p.tolist() for p in positions] == [[1, 2, 3], [4, 5]] and written == [1, 2, 3, 4, 5]
    assert writer.rows_written == len(written)

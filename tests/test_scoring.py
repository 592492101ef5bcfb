"""anomvae.scoring, the streaming scorer as a library function (score_csv).
What the score command makes of it is tested in test_cli_score.py."""

import io

import numpy as np
import pandas as pd
import pytest
from conftest import draw_rows as draw

from anomvae.scoring import score_csv


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

"""anomvae.scoring, the streaming scorers as library functions (score_csv,
score_images, calibrate_images). What the score command makes of them is
tested in test_cli_score.py and test_cli_score_images.py."""

import copy
import io
import json

import numpy as np
import pandas as pd
import pytest
from conftest import digits
from conftest import draw_rows as draw

from anomvae.scoring import calibrate_images, heatmap_name, score_csv, score_images


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


def test_infinite_scores_are_flagged_and_written_as_inf(detector, tmp_path, monkeypatch):
    X = draw(12, seed=23).assign(name=[f"r{i}" for i in range(12)])
    path = tmp_path / "batch.csv"
    X.to_csv(path, index=False)
    real = detector.score_samples

    def minus_inf_for_row_2(frame):
        scores = real(frame)
        scores[2] = -np.inf
        return scores

    monkeypatch.setattr(detector, "score_samples", minus_inf_for_row_2)
    out = io.StringIO()
    summary = score_csv(detector, str(path), out, id_columns=["name"], fmt="jsonl", chunk_size=100)
    records = [json.loads(line, parse_constant=lambda c: pytest.fail(f"not standard JSON: {c}"))
               for line in out.getvalue().splitlines()]
    assert records[2] == {"name": "r2", "anomaly_score": "inf", "is_anomaly": True}
    assert summary.rows_scored == 12 and summary.max_score == np.inf
    values = summary.to_dict()
    json.dumps(values, allow_nan=False)
    assert values["max_score"] == "inf" and values["top_anomalies"][0] == {"name": "r2", "anomaly_score": "inf"}


@pytest.mark.parametrize("threshold", [np.nan, np.inf, -np.inf])
def test_threshold_must_be_finite(detector, tmp_path, threshold):
    draw(5, seed=24).to_csv(tmp_path / "batch.csv", index=False)
    with pytest.raises(ValueError, match="threshold must be a finite number"):
        score_csv(detector, str(tmp_path / "batch.csv"), io.StringIO(), threshold=threshold)


def test_ids_are_read_as_written_with_a_decimal_comma(detector, tmp_path):
    X = draw(4, seed=25)
    text = "name;" + ";".join(X.columns) + "\n" + "".join(
        f"{name};" + ";".join(repr(v).replace(".", ",") for v in row) + "\n"
        for name, row in zip(["NA", " 1,5 ", "", "None"], X.to_numpy().tolist())
    )
    (tmp_path / "batch.csv").write_text(text)
    out = io.StringIO()
    score_csv(detector, str(tmp_path / "batch.csv"), out, id_columns=["name"], fmt="jsonl", delimiter=";",
              decimal=",")
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [r["name"] for r in records] == ["NA", " 1,5 ", "", "None"]
    np.testing.assert_allclose([r["anomaly_score"] for r in records], -detector.score_samples(X), rtol=1e-14)


# ------------------------------------------------------------- images


def test_score_images_adds_p_values_and_names_the_top_images(conv_model, test_images, tmp_path):
    np.save(tmp_path / "batch.npy", test_images.reshape(-1, 8, 8))
    model = copy.deepcopy(conv_model).calibrate(digits(0)[:120], fpr=0.05)
    out = io.StringIO()
    summary = score_images(model, str(tmp_path / "batch.npy"), out, batch_size=7, summary_top=4)
    table = pd.read_csv(io.StringIO(out.getvalue()))
    assert list(table.columns) == ["path", "anomaly_score", "p_value", "is_anomaly"]
    np.testing.assert_allclose(table["p_value"], model.p_values(test_images), rtol=0, atol=0)
    scores = -model.score_samples(test_images)
    best = np.argsort(-scores, kind="stable")[:4]
    assert summary.top_anomalies == [{"path": f"{tmp_path / 'batch.npy'}[{i}]", "anomaly_score": scores[i]}
                                     for i in best]
    assert summary.calibration_fpr == 0.05 and summary.score_shift.baseline == "calibration"
    assert summary.score_shift.n_batch == len(test_images)


def test_calibrate_images_reads_and_scores_in_batches(conv_model, tmp_path):
    reference = digits(0)[120:178]
    np.save(tmp_path / "reference.npy", reference.reshape(-1, 8, 8))
    model = copy.deepcopy(conv_model)
    assert calibrate_images(model, str(tmp_path / "reference.npy"), fpr=0.1, batch_size=5) == (58, [])
    expected = copy.deepcopy(conv_model).calibrate(reference, fpr=0.1)
    assert model.threshold_ == expected.threshold_ and model.offset_ == -model.threshold_
    np.testing.assert_array_equal(model.reference_scores_, expected.reference_scores_)
    with pytest.raises(ValueError, match="fpr must be a number in"):
        calibrate_images(model, str(tmp_path / "reference.npy"), fpr=1.5)


def test_heatmap_names_carry_the_output_position_and_the_stem():
    assert heatmap_name(17, "photos/cat.jpg") == "000017-cat.png"
    assert heatmap_name(3, "data/batch.npz[12]") == "000003-batch-12.png"
    assert heatmap_name(1234567, "x[1].png") == "1234567-x[1].png"

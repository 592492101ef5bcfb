"""The monitoring side of the anomvae command: calibrate, p-values,
--explain and --summary-json."""

import io
import json
import warnings

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import make_low_rank
from sklearn.exceptions import ConvergenceWarning

import anomvae
from anomvae import cli
from anomvae.persistence import read_metadata

FEATURES = ["a", "b", "c", "d", "e"]


def draw(n, seed):
    """Independent rows (one per seed) of one fixed distribution: a noisy 2-d subspace."""
    return pd.DataFrame(make_low_rank(n, len(FEATURES), rank=2, noise=0.2, seed=seed, basis_seed=321),
                        columns=FEATURES)


def invoke(*args, input=None):
    return CliRunner().invoke(cli.main, [str(a) for a in args], input=input)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("monitoring")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        detector = anomvae.VAEAnomalyDetector(hidden_dims=(16,), max_epochs=30, batch_size=64, lr=3e-3,
                                              random_state=0).fit(draw(400, seed=1))
    anomvae.save(detector, root / "plain.anomvae", extra={"id_columns": ["id"]})
    # The reference rows in another column order, with an extra column.
    reference = draw(300, seed=2)[FEATURES[::-1]].assign(note="ok")
    reference.to_csv(root / "reference.csv", index=False)
    batch = draw(60, seed=3)
    batch.loc[7, "c"] += 10 * batch["c"].std()
    batch.insert(0, "id", [f"id{i:02d}" for i in range(60)])
    batch.to_csv(root / "batch.csv", index=False)
    result = invoke("calibrate", root / "plain.anomvae", root / "reference.csv", "--fpr", "0.05",
                    "-o", root / "calibrated.anomvae")
    assert result.exit_code == 0, result.output
    return root


def test_calibrate_writes_a_new_model_and_a_summary(files):
    result = invoke("calibrate", files / "plain.anomvae", files / "reference.csv", "--fpr", "0.1",
                    "-o", files / "other.anomvae")
    assert result.exit_code == 0 and result.stdout == ""
    assert "calibrated on 300 rows of " in result.stderr
    assert "reference.csv for a false-alarm rate of 0.1; threshold" in result.stderr
    plain, other = anomvae.load(files / "plain.anomvae"), anomvae.load(files / "other.anomvae")
    assert plain.reference_scores_ is None and other.calibration_fpr_ == 0.1
    expected = plain.calibrate(draw(300, seed=2), fpr=0.1)
    assert other.threshold_ == expected.threshold_
    assert read_metadata(files / "other.anomvae")["extra"]["id_columns"] == ["id"]


def test_calibrate_in_place_from_stdin(files, tmp_path):
    model = tmp_path / "m.anomvae"
    model.write_bytes((files / "plain.anomvae").read_bytes())
    result = invoke("calibrate", model, "-", "--fpr", "0.2", "-q",
                    input=(files / "reference.csv").read_text())
    assert result.exit_code == 0 and result.stderr == ""
    assert anomvae.load(model).calibration_fpr_ == 0.2


def test_calibrate_input_errors_leave_the_model_alone(files, tmp_path):
    model = tmp_path / "m.anomvae"
    model.write_bytes((files / "plain.anomvae").read_bytes())
    before = model.read_bytes()
    (tmp_path / "few.csv").write_text(draw(20, seed=4).to_csv(index=False))
    result = invoke("calibrate", model, tmp_path / "few.csv", "--fpr", "0.01")
    assert result.exit_code == 2 and "Error: calibrating for fpr=0.01 needs at least 99 reference rows, got 20" \
        in result.stderr
    holes = draw(200, seed=4)
    holes.loc[3, "b"] = np.nan
    holes.to_csv(tmp_path / "holes.csv", index=False)
    result = invoke("calibrate", model, tmp_path / "holes.csv")
    assert result.exit_code == 2 and "line(s) 5" in result.stderr and "--invalid-rows skip" in result.stderr
    assert model.read_bytes() == before
    result = invoke("calibrate", model, tmp_path / "holes.csv", "--invalid-rows", "skip", "--fpr", "0.1")
    assert result.exit_code == 0 and "skipped 1 row(s) with empty, NaN or infinite values at line(s) 5" \
        in result.stderr
    assert len(anomvae.load(model).reference_scores_) == 199
    holes.head(3).assign(b=np.nan).to_csv(tmp_path / "none.csv", index=False)
    before = model.read_bytes()
    result = invoke("calibrate", model, tmp_path / "none.csv", "--invalid-rows", "skip")
    assert result.exit_code == 2 and "none.csv: every row was skipped" in result.stderr
    assert "line(s) 2, 3, 4" in result.stderr and model.read_bytes() == before
    for bad in ("0", "1", "x"):
        assert invoke("calibrate", model, tmp_path / "holes.csv", "--fpr", bad).exit_code == 2


def test_info_shows_calibration(files):
    text = invoke("info", files / "calibrated.anomvae").stdout
    assert "calibrated: for a false-alarm rate of 0.05 on 300 reference rows" in text
    assert "calibrated: no" in invoke("info", files / "plain.anomvae").stdout
    data = json.loads(invoke("info", files / "calibrated.anomvae", "--json").stdout)
    assert data["calibration"] == {"fpr": 0.05, "reference_rows": 300}


def test_score_adds_p_values_only_for_calibrated_models(files):
    plain = pd.read_csv(io.StringIO(invoke("score", files / "plain.anomvae", files / "batch.csv").stdout))
    assert "p_value" not in plain.columns
    result = invoke("score", files / "calibrated.anomvae", files / "batch.csv")
    out = pd.read_csv(io.StringIO(result.stdout))
    assert list(out.columns) == ["id", "anomaly_score", "p_value", "is_anomaly"]
    assert out["is_anomaly"].any()
    np.testing.assert_array_equal(out["p_value"] <= 0.05, out["is_anomaly"])
    detector = anomvae.load(files / "calibrated.anomvae")
    np.testing.assert_allclose(out["p_value"], detector.p_values(pd.read_csv(files / "batch.csv")[FEATURES]))


def test_explain_names_the_planted_column(files):
    result = invoke("score", files / "calibrated.anomvae", files / "batch.csv", "--explain", "2")
    out = pd.read_csv(io.StringIO(result.stdout), keep_default_na=False)
    planted = out.loc[out["id"] == "id07", "explanation"].item()
    assert planted.startswith("c=") and planted.count(" nats (observed ") == 2
    assert (out["explanation"] != "").tolist() == out["is_anomaly"].astype(bool).tolist()

    result = invoke("score", files / "calibrated.anomvae", files / "batch.csv", "--explain", "3",
                    "--format", "jsonl", "--only-anomalies")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    planted = next(r for r in rows if r["id"] == "id07")["explanation"]
    assert [e["feature"] for e in planted][0] == "c" and len(planted) == 3
    assert set(planted[0]) == {"feature", "contribution", "observed", "reconstructed"}
    assert planted[0]["contribution"] >= planted[1]["contribution"] >= planted[2]["contribution"]
    assert planted[0]["observed"] == pytest.approx(pd.read_csv(files / "batch.csv").loc[7, "c"])


def test_summary_json(files, tmp_path):
    target = tmp_path / "summary.json"
    result = invoke("score", files / "calibrated.anomvae", files / "batch.csv", "-o", tmp_path / "out.csv",
                    "--summary-json", target, "--summary-top", "3", "--chunk-size", "7")
    summary = json.loads(target.read_text())
    out = pd.read_csv(tmp_path / "out.csv", dtype={"id": str})
    assert summary["rows"] == summary["rows_scored"] == 60 and summary["rows_not_scored"] == 0
    assert summary["anomalies"] == int(out["is_anomaly"].sum())
    assert summary["calibration_fpr"] == 0.05 and summary["threshold"] == pytest.approx(
        anomvae.load(files / "calibrated.anomvae").threshold_)
    top = out.sort_values("anomaly_score", ascending=False).head(3)
    assert [t["id"] for t in summary["top_anomalies"]] == top["id"].tolist()
    assert summary["top_anomalies"][0]["id"] == "id07"
    assert summary["max_score"] == summary["top_anomalies"][0]["anomaly_score"]
    shift = summary["score_shift"]
    assert shift["baseline"] == "calibration" and shift["n_batch"] == 60 and not shift["shifted"]
    assert "may have shifted" not in result.stderr


def test_shift_is_reported_and_warned(files, tmp_path):
    (tmp_path / "moved.csv").write_text((draw(300, seed=5) * 2).assign(id="x").to_csv(index=False))
    target = tmp_path / "summary.json"
    result = invoke("score", files / "plain.anomvae", tmp_path / "moved.csv", "-o", tmp_path / "out.csv",
                    "--summary-json", target)
    assert result.exit_code == 0
    shift = json.loads(target.read_text())["score_shift"]
    assert shift["baseline"] == "training" and shift["shifted"] and shift["ks_p_value"] < 1e-3
    assert "moved.csv differ from the model's training scores" in result.stderr
    assert result.stderr.startswith("warning: the anomaly scores of ")
    quiet = invoke("score", files / "plain.anomvae", tmp_path / "moved.csv", "-q")
    assert quiet.stderr == ""
    # Quiet with a summary still runs the test; quiet alone has no reader for it.
    invoke("score", files / "plain.anomvae", tmp_path / "moved.csv", "-q", "--summary-json", target)
    assert json.loads(target.read_text())["score_shift"]["shifted"]


def test_quiet_scoring_skips_the_unread_shift_test(files, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("anomvae.scoring.score_shift", lambda *a, **k: calls.append(a))
    (tmp_path / "batch.csv").write_text(draw(20, seed=6).assign(id="x").to_csv(index=False))
    assert invoke("score", files / "plain.anomvae", tmp_path / "batch.csv", "-q").exit_code == 0
    assert calls == []
    assert invoke("score", files / "plain.anomvae", tmp_path / "batch.csv").exit_code == 0
    assert len(calls) == 1


def test_failed_score_writes_no_summary(files, tmp_path):
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    target = tmp_path / "summary.json"
    result = invoke("score", files / "plain.anomvae", tmp_path / "bad.csv", "--summary-json", target)
    assert result.exit_code == 2 and not target.exists()


def test_unwritable_summary_replaces_no_results(files, tmp_path, monkeypatch):
    (tmp_path / "out.csv").write_text("previous results\n")
    scored = []
    monkeypatch.setattr("anomvae.scoring.score_shift", lambda *a, **k: scored.append(a))
    result = invoke("score", files / "plain.anomvae", files / "batch.csv", "-o", tmp_path / "out.csv",
                    "--summary-json", tmp_path / "no-such-folder" / "summary.json")
    assert result.exit_code == 2 and "cannot write" in result.stderr and "summary.json" in result.stderr
    assert (tmp_path / "out.csv").read_text() == "previous results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"] and scored == []


def test_results_and_summary_are_written_with_the_umask(files, tmp_path):
    import os
    import stat

    previous = os.umask(0o027)
    try:
        result = invoke("score", files / "plain.anomvae", files / "batch.csv", "-o", tmp_path / "out.csv",
                        "--summary-json", tmp_path / "summary.json", "-q")
        assert result.exit_code == 0, result.output
        fitted = invoke("fit", files / "batch.csv", "-o", tmp_path / "m.anomvae", "--max-epochs", "2", "-q")
        assert fitted.exit_code == 0, fitted.output
    finally:
        os.umask(previous)
    for name in ("out.csv", "summary.json", "m.anomvae"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name
    # A file replaced in place keeps its own permissions.
    (tmp_path / "m.anomvae").chmod(0o644)
    calibrated = invoke("calibrate", tmp_path / "m.anomvae", files / "batch.csv", "--fpr", "0.1", "-q")
    assert calibrated.exit_code == 0, calibrated.output
    assert stat.S_IMODE((tmp_path / "m.anomvae").stat().st_mode) == 0o644

"""anomvae score (anomvae.cli.score and anomvae.scoring): CSV data, p-values,
--explain and --summary-json. (How CSV files are read and their errors named:
test_tables.py; image models: test_cli_score_images.py.)"""

import gzip
import io
import json
import os

import numpy as np
import pandas as pd
import pytest
from conftest import FEATURES, NEW, QUICK, TRAIN, assert_input_error, assert_runs_without, invoke, score_frame
from conftest import draw_cli_rows as draw

import anomvae
from anomvae.detector import VAEAnomalyDetector

# ----------------------------------------------------------- CSV data


def test_score_writes_every_row(model, new_frame):
    result = invoke("score", model, NEW)
    assert result.exit_code == 0, result.output
    out = score_frame(result)
    assert list(out.columns) == ["record_id", "anomaly_score", "is_anomaly"]
    assert list(out["record_id"]) == list(new_frame["record_id"])
    detector = anomvae.load(model)
    features = list(detector.feature_names_in_)
    expected = -detector.score_samples(new_frame[features])
    np.testing.assert_allclose(out["anomaly_score"], expected, rtol=1e-15)
    np.testing.assert_array_equal(out["is_anomaly"], expected > detector.threshold_)
    assert f"{len(new_frame)} rows, {int(out['is_anomaly'].sum())} anomalies" in result.stderr


def test_columns_matched_by_name(model, new_frame, tmp_path):
    shuffled = new_frame[list(new_frame.columns[::-1])].assign(extra="text", more=1.5)
    shuffled.to_csv(tmp_path / "shuffled.csv", index=False)
    a = score_frame(invoke("score", model, NEW))
    b = score_frame(invoke("score", model, tmp_path / "shuffled.csv"))
    pd.testing.assert_frame_equal(a, b)


def test_chunk_size_does_not_change_results(model):
    a = invoke("score", model, NEW)
    b = invoke("score", model, NEW, "--chunk-size", "7")
    assert a.exit_code == b.exit_code == 0 and len(a.stdout.splitlines()) == 551
    assert a.stdout == b.stdout


def test_stdin_gzip_and_output_file(model, tmp_path):
    baseline = invoke("score", model, NEW).stdout
    assert invoke("score", model, "-", input=NEW.read_text()).stdout == baseline
    with gzip.open(tmp_path / "new.csv.gz", "wt") as handle:
        handle.write(NEW.read_text())
    assert invoke("score", model, tmp_path / "new.csv.gz").stdout == baseline
    result = invoke("score", model, NEW, "-o", tmp_path / "out.csv")
    assert result.exit_code == 0 and result.stdout == ""
    assert (tmp_path / "out.csv").read_text() == baseline


def test_jsonl_output(model, tmp_path):
    csv_rows = score_frame(invoke("score", model, NEW))
    result = invoke("score", model, NEW, "--format", "jsonl")
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == len(csv_rows)
    assert set(records[0]) == {"record_id", "anomaly_score", "is_anomaly"}
    assert [r["is_anomaly"] for r in records] == list(csv_rows["is_anomaly"])
    np.testing.assert_allclose([r["anomaly_score"] for r in records], csv_rows["anomaly_score"], rtol=1e-14)
    invoke("score", model, NEW, "-o", tmp_path / "out.jsonl")
    assert (tmp_path / "out.jsonl").read_text() == result.stdout


def test_only_anomalies_threshold_and_exit_codes(model, tmp_path):
    all_rows = score_frame(invoke("score", model, NEW))
    flagged = score_frame(invoke("score", model, NEW, "--only-anomalies"))
    pd.testing.assert_frame_equal(flagged, all_rows[all_rows["is_anomaly"]].reset_index(drop=True))
    cut = float(all_rows["anomaly_score"].median())
    custom = score_frame(invoke("score", model, NEW, "--threshold", cut))
    np.testing.assert_array_equal(custom["is_anomaly"], custom["anomaly_score"] > cut)
    alarm = invoke("score", model, NEW, "--fail-on-anomaly", "-o", tmp_path / "o.csv")
    assert alarm.exit_code == 1 and (tmp_path / "o.csv").exists()
    calm = invoke("score", model, NEW, "--fail-on-anomaly", "--threshold", "1e9")
    assert calm.exit_code == 0 and "0 anomalies" in calm.stderr


def test_row_numbers_without_id_columns(tmp_path):
    invoke("fit", TRAIN, "-o", tmp_path / "m", "--exclude", "record_id", *QUICK)
    out = score_frame(invoke("score", tmp_path / "m", NEW))
    assert list(out.columns) == ["row", "anomaly_score", "is_anomaly"]
    assert list(out["row"]) == list(range(1, len(out) + 1))


def test_invalid_rows_are_named_or_marked_never_dropped(model, new_frame, tmp_path):
    holes = new_frame.copy()
    holes.loc[4, "AC"] = np.nan
    holes.loc[9, "Mean"] = np.inf
    holes.to_csv(tmp_path / "holes.csv", index=False)
    result = invoke("score", model, tmp_path / "holes.csv", "-o", tmp_path / "out.csv")
    assert_input_error(result, "2 row(s)", "line(s) 6, 11", "column 'AC'", "--invalid-rows mark")
    assert not (tmp_path / "out.csv").exists()

    marked = invoke("score", model, tmp_path / "holes.csv", "--invalid-rows", "mark")
    assert marked.exit_code == 0
    out = score_frame(marked)
    assert len(out) == len(holes) and list(out["record_id"]) == list(holes["record_id"])
    assert out["anomaly_score"].isna().sum() == 2 and out["is_anomaly"].isna().sum() == 2
    assert out.loc[4, "status"] == "not scored: empty or NaN value in column 'AC' (line 6)"
    assert out.loc[9, "status"] == "not scored: infinite value in column 'Mean' (line 11)"
    assert (out.drop(index=[4, 9])["status"] == "scored").all()
    assert "2 not scored" in marked.stderr
    only = score_frame(invoke("score", model, tmp_path / "holes.csv", "--invalid-rows", "mark", "--only-anomalies"))
    assert set(holes.loc[[4, 9], "record_id"]) <= set(only["record_id"])
    assert only["is_anomaly"].isna().sum() == 2


def test_values_beyond_float32_are_invalid_rows_not_nan_scores(model, new_frame, tmp_path):
    huge = new_frame.copy()
    huge.loc[2, "LB"] = 1e300
    huge.to_csv(tmp_path / "huge.csv", index=False)
    assert_input_error(invoke("score", model, tmp_path / "huge.csv"), "line(s) 4",
                       "value 1e+300 in column 'LB' beyond float32's range")
    out = score_frame(invoke("score", model, tmp_path / "huge.csv", "--invalid-rows", "mark"))
    assert out.loc[2, "status"] == "not scored: value 1e+300 in column 'LB' beyond float32's range (line 4)"
    assert out["anomaly_score"].drop(index=2).notna().all()
    # Within float32's range as written, beyond it once standardised by a spread below 1.
    detector = anomvae.load(model)
    column = detector.feature_names_in_[int(np.argmin(detector.scale_))]
    assert detector.scale_.min() < 0.95  # 3.3e38 / 0.95 > 3.4e38
    huge = new_frame.copy()
    huge.loc[5, column] = 3.3e38
    huge.to_csv(tmp_path / "scaled.csv", index=False)
    assert_input_error(invoke("score", model, tmp_path / "scaled.csv"), "line(s) 7",
                       f"value 3.3e+38 in column {column!r} beyond float32's range once standardised")
    out = score_frame(invoke("score", model, tmp_path / "scaled.csv", "--invalid-rows", "mark"))
    assert out.loc[5, "status"].startswith("not scored: value 3.3e+38") and out["status"].eq("scored").sum() == 549


def test_failed_score_leaves_existing_output_untouched(model, tmp_path):
    (tmp_path / "out.csv").write_text("previous results\n")
    bad = tmp_path / "bad.csv"
    bad.write_text(NEW.read_text().replace("\nc0003,", "\nc0003,oops", 1))
    result = invoke("score", model, bad, "-o", tmp_path / "out.csv", "--chunk-size", "1")
    assert result.exit_code == 2
    assert (tmp_path / "out.csv").read_text() == "previous results\n"
    assert sorted(os.listdir(tmp_path)) == ["bad.csv", "out.csv"]


def test_model_without_feature_names(tmp_path):
    detector = VAEAnomalyDetector(max_epochs=2, random_state=0).fit(np.random.RandomState(0).normal(size=(50, 3)))
    anomvae.save(detector, tmp_path / "m")
    assert_input_error(invoke("score", tmp_path / "m", NEW), "without column names")


def test_output_to_a_pipe_is_written_through_not_replaced(model, tmp_path):
    import threading

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()), daemon=True)
    reader.start()
    result = invoke("score", model, NEW, "-o", fifo, "-q")
    reader.join(timeout=60)
    assert result.exit_code == 0, result.output
    assert received and received[0] == invoke("score", model, NEW, "-q").stdout
    assert fifo.is_fifo() and sorted(os.listdir(tmp_path)) == ["fifo"]


@pytest.mark.parametrize("first, second", [("-o", "--summary-json"), ("-o", "--metrics-file"),
                                           ("--summary-json", "--metrics-file")])
def test_outputs_must_be_different_files(model, tmp_path, first, second):
    (tmp_path / "same").write_text("previous\n")
    os.symlink(tmp_path / "same", tmp_path / "link")
    for a, b in [(tmp_path / "same", tmp_path / "same"), (tmp_path / "same", tmp_path / "." / "link"),
                 (tmp_path / "new", tmp_path / "sub" / ".." / "new"), ("-", "-")]:
        (tmp_path / "sub").mkdir(exist_ok=True)
        results = [] if first == "-o" else ["-o", tmp_path / "out.csv"]
        result = invoke("score", model, NEW, *results, first, a, second, b)
        assert_input_error(result, f"{first} and {second} name the same file ({a}); give each its own")
    assert (tmp_path / "same").read_text() == "previous\n" and not (tmp_path / "new").exists()
    # Without -o the results go to standard output, where the other may not go too.
    if first == "-o":
        assert_input_error(invoke("score", model, NEW, second, "-"), f"-o and {second} name the same file (-)")
    # A device takes any number of outputs.
    assert invoke("score", model, NEW, first, os.devnull, second, os.devnull, "-q").exit_code == 0


def test_outputs_never_overwrite_the_inputs(model, tmp_path):
    data, mine = tmp_path / "new.csv", tmp_path / "m.anomvae"
    data.write_bytes(NEW.read_bytes())
    mine.write_bytes(model.read_bytes())
    os.link(data, tmp_path / "hard.csv")
    os.symlink(data, tmp_path / "soft.csv")
    for option, target in [("-o", data), ("-o", os.path.relpath(data)), ("-o", tmp_path / "hard.csv"),
                           ("-o", tmp_path / "soft.csv"), ("--summary-json", data), ("-o", mine),
                           ("--summary-json", tmp_path / "." / "m.anomvae"), ("--metrics-file", data),
                           ("--metrics-file", tmp_path / "soft.csv"), ("--metrics-file", mine)]:
        result = invoke("score", mine, data, option, target)
        assert_input_error(result, f"{option} {target} would overwrite ")
        assert data.read_bytes() == NEW.read_bytes() and mine.read_bytes() == model.read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["hard.csv", "m.anomvae", "new.csv", "soft.csv"]


def test_empty_output_names_are_usage_errors(model, tmp_path):
    for option in ("-o", "--summary-json", "--metrics-file"):
        assert_input_error(invoke("score", model, NEW, option, ""), f"{option} is an empty name")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_device_is_an_input_error(model, tmp_path):
    assert_input_error(invoke("score", model, NEW, "-o", "/dev/full", "-q"),
                       "cannot write /dev/full: No space left on device")
    # A summary long enough to fill its buffer fails while it is written: the error is still its own.
    result = invoke("score", model, NEW, "-o", tmp_path / "out.csv", "--summary-json", "/dev/full",
                    "--summary-top", "500", "-q")
    assert_input_error(result, "cannot write /dev/full: No space left on device")


@pytest.mark.parametrize("option", ["--summary-json", "--metrics-file"])
def test_a_failing_summary_or_metrics_file_leaves_the_results_file_as_it_was(model, tmp_path, option):
    (tmp_path / "out.csv").write_text("previous results\n")
    result = invoke("score", model, NEW, "-o", tmp_path / "out.csv", option, "/dev/full", "-q")
    assert_input_error(result, "cannot write /dev/full: No space left on device")
    assert (tmp_path / "out.csv").read_text() == "previous results\n"


def test_score_opens_the_model_file_twice(model, tmp_path, model_file_opens):
    # Once for the metadata check that comes before torch, once to load.
    result = invoke("score", model, TRAIN, "-o", tmp_path / "scores.csv", "-q")
    assert result.exit_code == 0, result.output
    assert model_file_opens == [str(model)] * 2


def test_scoring_a_csv_does_not_import_scikit_learn(model, tmp_path):
    # The scoring-only model skips scikit-learn's import time and memory;
    # the scores are the library's (see test_persistence).
    # Nor do the metrics.
    assert_runs_without(["score", str(model), str(NEW), "-o", str(tmp_path / "out.csv"), "-q",
                         "--metrics-file", str(tmp_path / "m.prom")], "sklearn")
    out = pd.read_csv(tmp_path / "out.csv", dtype={"record_id": str}, float_precision="round_trip")
    frame = pd.read_csv(NEW, dtype={"record_id": str}, float_precision="round_trip")
    detector = anomvae.load(model)
    expected = -detector.score_samples(frame[list(detector.feature_names_in_)])
    np.testing.assert_array_equal(out["anomaly_score"].to_numpy(), expected)


# ----------------------------- p-values, explanations and the summary


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


def test_the_alert_recipe_of_the_monitoring_docs(files, tmp_path):
    import re
    import subprocess
    import sys
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[1] / "docs" / "monitoring.md").read_text()
    (recipe,) = re.findall(r"```python\n(# alert\.py .*?)```", docs, flags=re.DOTALL)
    (tmp_path / "alert.py").write_text(recipe)
    (tmp_path / "moved.csv").write_text((draw(300, seed=5) * 2).assign(id="x").to_csv(index=False))

    def alert(model, data, *options):
        result = invoke("score", files / model, data, "-o", os.devnull, "-q", "--summary-json",
                        tmp_path / "summary.json", *options)
        assert result.exit_code == 0, result.output
        return subprocess.run([sys.executable, tmp_path / "alert.py", tmp_path / "summary.json"],
                              capture_output=True, text=True)

    flagged = alert("calibrated.anomvae", files / "batch.csv")
    assert flagged.returncode == 1 and flagged.stderr == ""
    assert flagged.stdout.startswith(f"{files / 'batch.csv'} ({files / 'calibrated.anomvae'}): ")
    assert " rows flagged [{'id': 'id07', 'anomaly_score': " in flagged.stdout
    assert "shifted" not in flagged.stdout and flagged.stdout.count("\n") == 1
    quiet = alert("calibrated.anomvae", files / "batch.csv", "--threshold", "1e9", "--summary-top", "0")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")
    shifted = alert("plain.anomvae", tmp_path / "moved.csv", "--threshold", "1e9")
    assert shifted.returncode == 1 and "scores shifted from the training baseline (KS p-value" in shifted.stdout
    marked = tmp_path / "marked.csv"
    frame = pd.read_csv(files / "batch.csv", dtype={"id": str})
    frame.loc[3, "b"] = np.nan
    frame.to_csv(marked, index=False)
    unscored = alert("calibrated.anomvae", marked, "--threshold", "1e9", "--invalid-rows", "mark")
    assert unscored.returncode == 1 and unscored.stdout.rstrip().endswith("): 1 rows not scored")


# ---------------------------------------------- Prometheus metrics


def read_metrics(path):
    """{name: (labels, value)} of a metrics file, read by prometheus_client's parser."""
    from prometheus_client.parser import text_string_to_metric_families

    families = list(text_string_to_metric_families(path.read_text(encoding="utf-8")))
    assert all(f.type == "gauge" and f.documentation and len(f.samples) == 1 for f in families)
    return {f.name: (f.samples[0].labels, f.samples[0].value) for f in families}


def test_metrics_file(files, tmp_path):
    import time

    target, before = tmp_path / "anomvae.prom", time.time()
    result = invoke("score", files / "calibrated.anomvae", files / "batch.csv", "-o", tmp_path / "out.csv", "-q",
                    "--summary-json", tmp_path / "summary.json", "--metrics-file", target, "--fail-on-anomaly")
    after = time.time()
    assert result.exit_code == 1 and result.stderr == "", result.output
    metrics, summary = read_metrics(target), json.loads((tmp_path / "summary.json").read_text())
    assert {labels["model"] for labels, _ in metrics.values()} == {"calibrated.anomvae"}
    assert {labels["input"] for labels, _ in metrics.values()} == {"batch.csv"}
    found = {name: value for name, (_, value) in metrics.items()}
    shift = summary["score_shift"]
    assert found == {
        "anomvae_rows_scored": 60, "anomvae_rows_flagged": summary["anomalies"], "anomvae_rows_not_scored": 0,
        "anomvae_threshold_nats": summary["threshold"], "anomvae_max_score_nats": summary["max_score"],
        "anomvae_calibration_false_alarm_ratio": 0.05, "anomvae_score_shift_ks_statistic": shift["ks_statistic"],
        "anomvae_score_shift_p_value": shift["ks_p_value"], "anomvae_score_shifted": 0,
        "anomvae_run_duration_seconds": found["anomvae_run_duration_seconds"],
        "anomvae_last_success_timestamp_seconds": found["anomvae_last_success_timestamp_seconds"],
    }
    assert summary["anomalies"] >= 1
    assert before <= found["anomvae_last_success_timestamp_seconds"] <= after
    assert 0 < found["anomvae_run_duration_seconds"] <= after - before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["anomvae.prom", "out.csv", "summary.json"]


def test_metrics_file_runs_the_shift_test_even_quiet(files, tmp_path):
    (tmp_path / "moved.csv").write_text((draw(300, seed=5) * 2).assign(id="x").to_csv(index=False))
    result = invoke("score", files / "plain.anomvae", tmp_path / "moved.csv", "-o", os.devnull, "-q",
                    "--metrics-file", tmp_path / "m.prom")
    assert result.exit_code == 0 and result.stderr == ""
    metrics = read_metrics(tmp_path / "m.prom")
    assert metrics["anomvae_score_shifted"][1] == 1 and metrics["anomvae_score_shift_p_value"][1] < 1e-3
    assert "anomvae_calibration_false_alarm_ratio" not in metrics


def test_metrics_file_on_standard_output(files, tmp_path):
    result = invoke("score", files / "plain.anomvae", "-", "-o", tmp_path / "out.csv", "--metrics-file", "-",
                    input=(files / "batch.csv").read_text())
    assert result.exit_code == 0, result.output
    (tmp_path / "stdout.prom").write_text(result.stdout)
    metrics = read_metrics(tmp_path / "stdout.prom")
    assert metrics["anomvae_rows_scored"] == ({"model": "plain.anomvae", "input": "<stdin>"}, 60)


def test_failed_score_keeps_the_previous_metrics_file(files, tmp_path):
    target = tmp_path / "anomvae.prom"
    target.write_text("# previous run\n")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    result = invoke("score", files / "plain.anomvae", tmp_path / "bad.csv", "--metrics-file", target)
    assert result.exit_code == 2 and target.read_text() == "# previous run\n"
    (tmp_path / "out.csv").write_text("previous results\n")
    # An unwritable metrics file fails before anything is scored or replaced.
    result = invoke("score", files / "plain.anomvae", files / "batch.csv", "-o", tmp_path / "out.csv",
                    "--summary-json", tmp_path / "s.json", "--metrics-file", tmp_path / "missing" / "m.prom")
    assert_input_error(result, "cannot write", "m.prom")
    assert (tmp_path / "out.csv").read_text() == "previous results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["anomvae.prom", "bad.csv", "out.csv"]


def test_metrics_file_for_images(image_model, new_images, tmp_path):
    broken = new_images / "0_002.png"
    broken.write_bytes(broken.read_bytes()[:40])
    result = invoke("score", image_model, new_images, "-o", tmp_path / "out.csv", "--metrics-file",
                    tmp_path / "images.prom", "--invalid-rows", "mark")
    assert result.exit_code == 0, result.output
    out = pd.read_csv(tmp_path / "out.csv")
    metrics = read_metrics(tmp_path / "images.prom")
    assert metrics["anomvae_rows_scored"] == ({"model": "digits.anomvae", "input": "new"}, 7)
    assert metrics["anomvae_rows_flagged"][1] == (out["is_anomaly"] == True).sum()  # noqa: E712
    assert metrics["anomvae_rows_not_scored"][1] == 1
    assert metrics["anomvae_threshold_nats"][1] == anomvae.load(image_model).threshold_
    assert metrics["anomvae_max_score_nats"][1] == out["anomaly_score"].max()
    assert "anomvae_last_success_timestamp_seconds" in metrics


@pytest.fixture(scope="module")
def bernoulli_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bernoulli")
    rng = np.random.RandomState(0)
    frame = pd.DataFrame((rng.rand(200, 4) > 0.5).astype(float), columns=["a", "b", "c", "d"])
    frame.to_csv(folder / "train.csv", index=False)
    model = folder / "m.anomvae"
    result = invoke("fit", folder / "train.csv", "-o", model, "--likelihood", "bernoulli", *QUICK)
    assert result.exit_code == 0, result.output
    batch = frame.head(6).copy()
    batch.loc[3, "c"] = 1.5  # line 5
    batch.to_csv(folder / "batch.csv", index=False)
    return folder, model


def test_values_outside_the_unit_interval_are_invalid_rows_when_scoring(bernoulli_data, tmp_path):
    folder, model = bernoulli_data
    reason = "value 1.5 in column 'c' outside [0, 1], which likelihood='bernoulli' needs"
    result = invoke("score", model, folder / "batch.csv", "-o", tmp_path / "out.csv")
    assert_input_error(result, "batch.csv", "line(s) 5", reason, "--invalid-rows mark")
    assert not (tmp_path / "out.csv").exists()
    marked = invoke("score", model, folder / "batch.csv", "--invalid-rows", "mark")
    assert marked.exit_code == 0, marked.output
    out = score_frame(marked)
    assert len(out) == 6 and out.loc[3, "status"] == f"not scored: {reason} (line 5)"
    assert np.isnan(out.loc[3, "anomaly_score"]) and out.drop(index=3)["anomaly_score"].notna().all()


def test_values_outside_the_unit_interval_are_invalid_rows_when_fitting(bernoulli_data, tmp_path):
    folder, _ = bernoulli_data
    refused = invoke("fit", folder / "batch.csv", "-o", tmp_path / "m.anomvae", "--likelihood", "bernoulli", *QUICK)
    assert_input_error(refused, "line(s) 5", "outside [0, 1]", "--invalid-rows skip")
    assert not (tmp_path / "m.anomvae").exists()
    skipped = invoke("fit", folder / "batch.csv", "-o", tmp_path / "m.anomvae", "--likelihood", "bernoulli",
                     "--invalid-rows", "skip", *QUICK)
    assert skipped.exit_code == 0 and "skipped 1 row(s)" in skipped.stderr and "line(s) 5" in skipped.stderr
    # The Gaussian likelihood has no such domain: the same file fits as it is.
    assert invoke("fit", folder / "batch.csv", "-o", tmp_path / "g.anomvae", *QUICK).exit_code == 0


def test_values_outside_the_unit_interval_are_invalid_rows_when_calibrating(bernoulli_data, tmp_path):
    folder, model = bernoulli_data
    refused = invoke("calibrate", model, folder / "batch.csv", "--fpr", "0.5", "-o", tmp_path / "c.anomvae")
    assert_input_error(refused, "line(s) 5", "outside [0, 1]")
    skipped = invoke("calibrate", model, folder / "batch.csv", "--fpr", "0.5", "-o", tmp_path / "c.anomvae",
                     "--invalid-rows", "skip")
    assert skipped.exit_code == 0 and "at line(s) 5" in skipped.stderr
    assert "calibrated on 5 rows" in skipped.stderr


# --------------------------------- names, thresholds and infinite scores


def _strict_json(text):
    """``json.loads`` that refuses the non-standard NaN, Infinity and -Infinity."""
    def refuse(constant):
        raise ValueError(f"not standard JSON: {constant}")
    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("name", ["batch[1].csv", "what?.csv", "a*.csv"])
def test_a_csv_file_named_like_a_pattern_is_read_as_csv(files, tmp_path, name):
    (tmp_path / name).write_bytes((files / "batch.csv").read_bytes())
    result = invoke("score", files / "plain.anomvae", tmp_path / name)
    assert result.exit_code == 0, result.output
    assert result.stdout == invoke("score", files / "plain.anomvae", files / "batch.csv").stdout


@pytest.mark.parametrize("column", ["anomaly_score", "is_anomaly", "p_value", "status", "explanation"])
def test_an_id_column_named_as_an_output_column_is_refused(files, tmp_path, column):
    batch = pd.read_csv(files / "batch.csv").assign(**{column: "x"})
    batch.to_csv(tmp_path / "batch.csv", index=False)
    result = invoke("score", files / "plain.anomvae", tmp_path / "batch.csv", "--id-column", column,
                    "-o", tmp_path / "out.csv")
    assert_input_error(result, f"the id column '{column}' has the name of a column that score writes")
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "1e999"])
def test_threshold_must_be_a_finite_number(files, value):
    result = invoke("score", files / "plain.anomvae", files / "batch.csv", "--threshold", value)
    assert_input_error(result, "'--threshold'", "is not a finite number")


def test_an_infinite_score_is_written_alike_in_every_format(files, tmp_path):
    # A value within float32's range as standardised, whose square is not:
    # the row is scored, and its score is +inf.
    batch = pd.read_csv(files / "batch.csv", dtype={"id": str})
    batch.loc[4, "a"] = 1e30
    batch.to_csv(tmp_path / "batch.csv", index=False)
    model = files / "calibrated.anomvae"
    result = invoke("score", model, tmp_path / "batch.csv", "--summary-json", tmp_path / "s.json")
    assert result.exit_code == 0, result.output
    row = result.stdout.splitlines()[5].split(",")
    assert row[0] == "id04" and row[1] == "inf" and row[-1] == "true"
    summary = _strict_json((tmp_path / "s.json").read_text())
    assert summary["max_score"] == "inf" and summary["anomalies"] >= 1
    assert summary["top_anomalies"][0] == {"id": "id04", "anomaly_score": "inf"}
    result = invoke("score", model, tmp_path / "batch.csv", "--format", "jsonl")
    records = [_strict_json(line) for line in result.stdout.splitlines()]
    assert records[4]["anomaly_score"] == "inf" and records[4]["is_anomaly"] is True
    assert all(isinstance(r["anomaly_score"], float) for i, r in enumerate(records) if i != 4)

"""The anomvae command: fit, score, info, exit codes and every input error."""

import gzip
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import assert_runs_without

import anomvae
from anomvae import cli
from anomvae.cli import info as info_command
from anomvae.cli import options as cli_options
from anomvae.detector import VAEAnomalyDetector
from anomvae.preprocessing import grid_variance_floor

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "data"
TRAIN = EXAMPLES / "cardio_train.csv"
NEW = EXAMPLES / "cardio_new.csv"
QUICK = ["--max-epochs", "5", "--random-state", "0"]


def invoke(*args, input=None):
    return CliRunner().invoke(cli.main, [str(a) for a in args], input=input)


def assert_input_error(result, *fragments):
    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0]), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "cardio.anomvae"
    result = invoke("fit", TRAIN, "-o", path, "--id-column", "record_id", *QUICK)
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture
def new_frame():
    return pd.read_csv(NEW, dtype={"record_id": str})


def score_frame(result):
    assert result.exit_code in (0, 1), result.output
    return pd.read_csv(io.StringIO(result.stdout), dtype={"record_id": str})


# ------------------------------------------------------------------- fit


def test_fit_writes_a_model_and_a_summary(model):
    detector = anomvae.load(model)
    assert list(detector.feature_names_in_) == list(pd.read_csv(TRAIN, nrows=0).columns[1:])
    assert detector.max_epochs == 5 and detector.random_state == 0
    metadata = anomvae.persistence.read_metadata(model)
    assert metadata["extra"]["id_columns"] == ["record_id"]
    assert metadata["extra"]["training"]["rows"] == 1281


def test_fit_summary_and_quiet(tmp_path):
    result = invoke("fit", TRAIN, "-o", tmp_path / "m", *QUICK)
    assert result.exit_code == 0
    assert "trained on 1281 rows x 21 features" in result.stderr
    assert "ignoring non-numeric column(s): record_id" in result.stderr
    assert result.stdout == ""
    quiet = invoke("fit", TRAIN, "-o", tmp_path / "m", "--quiet", *QUICK)
    assert quiet.exit_code == 0 and quiet.stderr == ""


def test_fit_options_reach_the_estimator(tmp_path):
    result = invoke(
        "fit", TRAIN, "-o", tmp_path / "m", "--columns", "LB,AC,FM", "--hidden-dims", "8,4",
        "--latent-dim", "2", "--contamination", "0.1", "--standardize", "false", "--n-iter-no-change",
        "none", "--beta", "0.5", "--lr", "0.01", "--batch-size", "64", "--min-variance", "0.05", *QUICK,
    )
    assert result.exit_code == 0, result.output
    detector = anomvae.load(tmp_path / "m")
    assert list(detector.feature_names_in_) == ["LB", "AC", "FM"]
    params = detector.get_params()
    assert params["hidden_dims"] == (8, 4) and params["latent_dim"] == 2
    assert params["contamination"] == 0.1 and params["standardize"] is False
    assert params["n_iter_no_change"] is None and params["beta"] == 0.5 and params["batch_size"] == 64
    assert params["min_variance"] == 0.05 and np.all(detector.min_variance_ == 0.05)


def test_fit_exclude(tmp_path):
    result = invoke("fit", TRAIN, "-o", tmp_path / "m", "--exclude", "DS,DP", "--id-column", "record_id", *QUICK)
    assert result.exit_code == 0
    names = list(anomvae.load(tmp_path / "m").feature_names_in_)
    assert "DS" not in names and "DP" not in names and len(names) == 19


def test_cli_defaults_are_the_estimators():
    defaults = VAEAnomalyDetector().get_params()
    # As the commands pass them on: "true"/"false" choices become booleans.
    shown = cli_options.estimator_params({param: default for param, _, default, _ in cli_options.ESTIMATOR_OPTIONS})
    for param, default in shown.items():
        assert defaults[param] == default and type(defaults[param]) is type(default), param
    exposed = {param for param, *_ in cli_options.ESTIMATOR_OPTIONS}
    # image_shape comes from --image-size and --grayscale.
    assert exposed == set(defaults) - {"verbose", "image_shape"}


def test_fit_bad_parameter_value(tmp_path):
    result = invoke("fit", TRAIN, "-o", tmp_path / "m", "--contamination", "0.9")
    assert_input_error(result, "contamination")
    assert not (tmp_path / "m").exists()


def test_fit_rows_with_missing_values(tmp_path):
    frame = pd.read_csv(TRAIN).head(60)
    frame.loc[[3, 10], "AC"] = np.nan
    frame.loc[20, "LB"] = np.inf
    frame.to_csv(tmp_path / "holes.csv", index=False)
    result = invoke("fit", tmp_path / "holes.csv", "-o", tmp_path / "m", *QUICK)
    assert_input_error(result, "3 row(s)", "line(s) 5, 12, 22", "column 'AC'", "--invalid-rows skip")
    assert not (tmp_path / "m").exists()
    skipped = invoke("fit", tmp_path / "holes.csv", "-o", tmp_path / "m", "--invalid-rows", "skip", *QUICK)
    assert skipped.exit_code == 0
    assert "skipped 3 row(s)" in skipped.stderr and "5, 12, 22" in skipped.stderr
    assert anomvae.persistence.read_metadata(tmp_path / "m")["extra"]["training"]["rows"] == 57
    # Nothing left to train on: named, not scikit-learn's message about an empty array.
    frame.head(8).assign(AC=np.nan).to_csv(tmp_path / "all.csv", index=False)
    empty = invoke("fit", tmp_path / "all.csv", "-o", tmp_path / "m2", "--invalid-rows", "skip", *QUICK)
    assert_input_error(empty, "all.csv: 0 row(s) left after skipping 8", "line(s) 2, 3, 4, 5, 6 and 3 more",
                       "fit needs at least 2")
    assert not (tmp_path / "m2").exists()


def test_fit_from_stdin(tmp_path):
    result = invoke("fit", "-", "-o", tmp_path / "m", *QUICK, input=TRAIN.read_text())
    assert result.exit_code == 0, result.output
    assert "<stdin>" in anomvae.persistence.read_metadata(tmp_path / "m")["extra"]["training"]["file"]


def test_fit_unwritable_output(tmp_path):
    result = invoke("fit", TRAIN, "-o", tmp_path / "no" / "such" / "dir" / "m", *QUICK)
    assert_input_error(result, "cannot write")


# ----------------------------------------------------------------- score


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


# ------------------------------------------------------ input errors


def _write(tmp_path, text, name="data.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_trailing_delimiter_shifts_no_column(model, tmp_path):
    # Every data line ends in a delimiter: one empty field more than the
    # header. pandas would make the first column the index and shift the rest.
    trailing = _write(tmp_path, "".join(
        line + ("," if number else "") + "\n" for number, line in enumerate(NEW.read_text().splitlines())
    ))
    plain = score_frame(invoke("score", model, NEW))
    shifted = score_frame(invoke("score", model, trailing))
    pd.testing.assert_frame_equal(shifted, plain)
    result = invoke("fit", trailing, "-o", tmp_path / "m", "--id-column", "record_id", *QUICK)
    assert result.exit_code == 0, result.output
    assert list(anomvae.load(tmp_path / "m").feature_names_in_) == list(pd.read_csv(NEW, nrows=0).columns[1:])


@pytest.mark.parametrize("command", ["fit", "score"])
def test_values_beyond_the_header_are_named(model, tmp_path, command):
    lines = NEW.read_text().splitlines()
    lines[1] += ","  # a trailing delimiter loses nothing; a value beyond the header would be lost
    lines[4] += ",7"
    data = _write(tmp_path, "\n".join(lines) + "\n")
    args = ["fit", data, "-o", tmp_path / "m"] if command == "fit" else ["score", model, data]
    assert_input_error(invoke(*args), "data.csv: line 5 has more values than the header has columns")
    assert not (tmp_path / "m").exists()


def test_values_beyond_the_header_with_a_delimiter_of_two_characters(model, tmp_path):
    # pandas reads such a delimiter as a regular expression; the line is
    # then not looked for, but the error still names the file.
    lines = [line.replace(",", ";;") for line in NEW.read_text().splitlines()]
    lines[1] += ";;7"
    data = _write(tmp_path, "\n".join(lines) + "\n")
    result = invoke("score", model, data, "--delimiter", ";;")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "data.csv" in result.stderr and "more values than the header" in result.stderr


def test_unreadable_part_far_down_a_compressed_file_is_named(model, tmp_path):
    # About 3 MB of text: pandas reads far less than that for the first
    # chunk, so the cut is met while reading a later one.
    header, *rows = NEW.read_text().splitlines(keepends=True)
    whole = gzip.compress((header + "".join(rows * 50)).encode())
    (tmp_path / "cut.csv.gz").write_bytes(whole[: len(whole) * 2 // 3])
    result = invoke("score", model, tmp_path / "cut.csv.gz", "-o", tmp_path / "out.csv", "--chunk-size", "50")
    assert_input_error(result, "cut.csv.gz: cannot be read")
    assert not (tmp_path / "out.csv").exists()


def test_malformed_line_far_down_a_file_is_named(model, tmp_path):
    lines = NEW.read_text().splitlines()
    lines[300] += ",7"  # a longer line after the first chunk: the parser's own error, with the file
    data = _write(tmp_path, "\n".join(lines) + "\n")
    assert_input_error(invoke("score", model, data, "--chunk-size", "100"),
                       "data.csv: cannot be parsed as CSV", "line 301")


def test_missing_model_columns_are_listed(model, new_frame, tmp_path):
    new_frame.drop(columns=["AC", "Mean"]).to_csv(tmp_path / "d.csv", index=False)
    assert_input_error(invoke("score", model, tmp_path / "d.csv"), "missing column(s) 'AC', 'Mean'")


def test_non_numeric_value_names_column_line_and_value(model, new_frame, tmp_path):
    frame = new_frame.astype({"MSTV": object})
    frame.loc[7, "MSTV"] = "n/a?"
    frame.to_csv(tmp_path / "d.csv", index=False)
    assert_input_error(invoke("score", model, tmp_path / "d.csv"), "column 'MSTV', line 9", "'n/a?'")
    assert_input_error(invoke("fit", tmp_path / "d.csv", "-o", tmp_path / "m", *QUICK), "column 'MSTV', line 9")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "the file is empty"),
        (NEW.read_text().splitlines()[0] + "\n", "header but no data rows"),
        (NEW.read_text().replace(",", ";"), "delimited by ';'"),
    ],
    ids=["empty", "header-only", "semicolons"],
)
def test_unusable_files(model, tmp_path, text, fragment):
    path = _write(tmp_path, text)
    assert_input_error(invoke("score", model, path), fragment)
    assert_input_error(invoke("fit", path, "-o", tmp_path / "m"), fragment)
    assert not (tmp_path / "m").exists()


def test_other_delimiter_works_when_named(model, tmp_path):
    path = _write(tmp_path, NEW.read_text().replace(",", ";"))
    baseline = invoke("score", model, NEW).stdout
    assert invoke("score", model, path, "--delimiter", ";").stdout == baseline


def test_paths_that_are_not_files(model, tmp_path):
    for args in (["score", model, tmp_path], ["score", model, tmp_path / "nope.csv"],
                 ["fit", tmp_path, "-o", tmp_path / "m"], ["score", tmp_path / "nope", NEW]):
        result = invoke(*args)
        assert result.exit_code == 2 and "Error:" in result.stderr and "Traceback" not in result.output


def test_a_file_that_is_not_a_model(tmp_path):
    assert_input_error(invoke("score", TRAIN, NEW), "not an anomvae model file")
    assert_input_error(invoke("info", TRAIN), "not an anomvae model file")


def test_model_without_feature_names(tmp_path):
    detector = VAEAnomalyDetector(max_epochs=2, random_state=0).fit(np.random.RandomState(0).normal(size=(50, 3)))
    anomvae.save(detector, tmp_path / "m")
    assert_input_error(invoke("score", tmp_path / "m", NEW), "without column names")


def test_internal_errors_exit_3(model, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("anomvae.scoring.score_csv", broken)
    result = invoke("score", model, NEW)
    assert result.exit_code == 3
    assert "internal error: RuntimeError: boom" in result.stderr


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


def test_summary_and_results_must_be_different_files(model, tmp_path):
    for target in (["-o", tmp_path / "same"], []):
        summary = target[-1] if target else "-"
        result = invoke("score", model, NEW, *target, "--summary-json", summary)
        assert result.exit_code == 2 and "name the same file" in result.stderr
    assert not (tmp_path / "same").exists()


def test_interrupt_exits_130_and_leaves_no_output(model, monkeypatch, tmp_path):
    (tmp_path / "out.csv").write_text("previous results\n")
    from anomvae import results

    real_write = results.write_frame
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # a Ctrl-C between chunks
            raise KeyboardInterrupt
        return real_write(*args, **kwargs)

    monkeypatch.setattr("anomvae.results.write_frame", interrupted)
    result = invoke("score", model, NEW, "-o", tmp_path / "out.csv", "--chunk-size", "100")
    assert result.exit_code == 130 and len(calls) == 2
    assert "Error: interrupted" in result.stderr
    assert (tmp_path / "out.csv").read_text() == "previous results\n"
    assert sorted(os.listdir(tmp_path)) == ["out.csv"]


def _stop_while_reading_stdin(model, tmp_path, signum, preexec_fn=None, wait=30):
    """Run ``anomvae score MODEL - -o out.csv`` with a few rows on stdin and
    the rest never coming, send ``signum`` once its output file is open under
    a temporary name, and return the return code and stderr."""
    header, *rows = NEW.read_text().splitlines(keepends=True)
    script = Path(sys.executable).with_name("anomvae")
    process = subprocess.Popen([str(script), "score", str(model), "-", "-o", str(tmp_path / "out.csv"),
                                "--chunk-size", "10"], stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                               preexec_fn=preexec_fn)
    try:
        process.stdin.write((header + "".join(rows[:55])).encode())
        process.stdin.flush()
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".anomvae-*.tmp")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(tmp_path.glob(".anomvae-*.tmp")), "the command never opened its output"
        time.sleep(0.3)
        process.send_signal(signum)
        try:
            code = process.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            code = None
        return code, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdin.close()


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
@pytest.mark.parametrize("signum, message", [(signal.SIGTERM, "terminated"), (signal.SIGINT, "interrupted")])
def test_a_stopped_command_cleans_up_and_ends_by_the_signal(model, tmp_path, signum, message):
    code, process = _stop_while_reading_stdin(model, tmp_path, signum)
    stderr = process.stderr.read().decode()
    process.stderr.close()
    assert code == -signum, stderr  # ended by the signal, as shells and service managers expect
    assert f"Error: {message}; no output file is left half-written" in stderr and "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.name != "posix", reason="POSIX signals")
def test_a_signal_the_parent_ignores_stays_ignored(model, tmp_path):
    # As for a background job of a script: Ctrl-C is not for it.
    # A handled signal ends the command within a fraction of a second; 3 s is ample.
    code, process = _stop_while_reading_stdin(model, tmp_path, signal.SIGINT, wait=3,
                                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    process.stderr.close()
    assert code is None  # still running (killed by the helper afterwards)


def test_main_called_from_python_keeps_the_callers_signal_handlers(model, monkeypatch):
    # Only the anomvae program (cli.run) installs handlers and ends by a signal.
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    monkeypatch.setattr("sys.argv", ["anomvae", "info", str(model)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 0
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_closed_stdout_exits_141_not_1(model, tmp_path):
    # `anomvae score ... --fail-on-anomaly | head -1`: the results are
    # incomplete, so neither 0 nor 1 ("output complete") may come back.
    columns = pd.read_csv(TRAIN, nrows=0).columns[1:]
    rows = np.random.RandomState(0).normal(size=(60_000, len(columns)))
    frame = pd.DataFrame(rows, columns=columns)
    frame.insert(0, "record_id", [f"r{i}" for i in range(len(frame))])
    frame.to_csv(tmp_path / "big.csv", index=False)
    script = Path(sys.executable).with_name("anomvae")
    with subprocess.Popen([str(script), "score", str(model), str(tmp_path / "big.csv"), "--fail-on-anomaly"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as process:
        first = process.stdout.readline()
        process.stdout.close()
        stderr = process.stderr.read().decode()
        code = process.wait(timeout=120)
    assert first == b"record_id,anomaly_score,is_anomaly\n", stderr
    assert code == 141, stderr
    assert "Error: the output was closed before every result was written" in stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr


# ------------------------------------------------------------------ info


def test_info_text_and_json(model):
    text = invoke("info", model)
    assert text.exit_code == 0
    assert "features:   21: LB, AC" in text.stdout and "threshold:" in text.stdout
    data = json.loads(invoke("info", model, "--json").stdout)
    detector = anomvae.load(model)
    assert data["threshold"] == detector.threshold_
    assert data["features"] == list(detector.feature_names_in_)
    assert data["training"]["epochs"] == detector.n_epochs_ and data["training"]["rows"] == 1281
    assert data["params"]["max_epochs"] == 5 and data["anomvae_version"] == anomvae.__version__
    assert data["input"] == "csv" and data["architecture"] == "mlp" and data["likelihood"] == "gaussian"
    assert data["image_shape"] is data["color"] is data["image_size"] is None
    assert "network:    mlp, gaussian likelihood" in text.stdout and "image:" not in text.stdout
    # One floor per feature, as fit derives them from the training data.
    X = pd.read_csv(TRAIN)[data["features"]].to_numpy(float)
    assert len(data["variance_floors"]) == 21
    np.testing.assert_allclose(data["variance_floors"], grid_variance_floor(X, X.std(axis=0)), rtol=1e-12)
    assert max(data["variance_floors"]) > 1e-3 and "variance:   floor 0.001 on " in text.stdout
    assert data["params"]["trim_by"] == "kl" and "trim_by=kl" in text.stdout


def test_info_of_a_file_from_before_trim_by_says_it_trimmed_by_the_loss():
    # Written by anomvae at commit b19235c (model format 2), as load() reads it.
    old = str(Path(__file__).parent / "data" / "format2-gaussian.anomvae")
    assert json.loads(invoke("info", old, "--json").stdout)["params"]["trim_by"] == "loss"
    assert "trim_by=loss" in invoke("info", old).stdout
    assert anomvae.load(old).get_params()["trim_by"] == "loss"


def _damaged_copy(model, damaged, edit):
    """A copy of the model file whose metadata ``edit`` changed in place."""
    with zipfile.ZipFile(model) as source, zipfile.ZipFile(damaged, "w") as target:
        for item in source.infolist():
            content = source.read(item)
            if item.filename == "anomvae.json":
                metadata = json.loads(content)
                edit(metadata["fitted"])
                content = json.dumps(metadata)
            target.writestr(item, content)
    return damaged


def test_info_of_a_damaged_network_configuration(model, tmp_path):
    def two_floors(fitted):
        fitted["module_config"]["min_variance"] = [1e-3, 1e-3]  # 21 features

    damaged = _damaged_copy(model, tmp_path / "damaged.anomvae", two_floors)
    result = invoke("info", damaged)
    assert result.exit_code == 0, result.output
    assert "variance:   unreadable (the network configuration is damaged)" in result.stdout
    assert_input_error(invoke("score", damaged, TRAIN, "-o", tmp_path / "out.csv"), "corrupted model file")
    assert not (tmp_path / "out.csv").exists()


def test_info_of_a_file_missing_its_threshold_and_history(model, tmp_path):
    def no_threshold_nor_history(fitted):
        del fitted["threshold_"]
        fitted["history_"] = None

    result = invoke("info", _damaged_copy(model, tmp_path / "damaged.anomvae", no_threshold_nor_history))
    assert result.exit_code == 0, result.output
    assert "threshold:  ? nats" in result.stdout and "final train loss ?" in result.stdout


def test_score_opens_the_model_file_twice(model, tmp_path, model_file_opens):
    # Once for the metadata check that comes before torch, once to load.
    result = invoke("score", model, TRAIN, "-o", tmp_path / "scores.csv", "-q")
    assert result.exit_code == 0, result.output
    assert model_file_opens == [str(model)] * 2


@pytest.mark.parametrize("floors, line", [
    ([1e-3, 1e-3, 1e-3], "floor 0.001 on every feature"),
    ([0.05, 0.05], "floor 0.05 on every feature"),
    ([1e-3, 0.0125, 1e-3, 0.25], "floor 0.001 on 2 features, 0.0125 to 0.25 on 2 (from their value grids"),
    ([1e-3, 0.0125], "floor 0.001 on 1 feature, 0.0125 on 1 (from their value grids"),
    ([0.02, 0.5], "floor 0.02 to 0.5 on every feature"),
])
def test_info_sums_up_the_variance_floors(floors, line):
    assert line in info_command.floors_line(np.array(floors))


def test_info_shows_grid_floors_of_discrete_features(tmp_path):
    # Two continuous features and one count on a grid of step 1.
    rng = np.random.RandomState(0)
    frame = pd.DataFrame({"a": rng.randn(300), "b": rng.randn(300), "count": rng.poisson(2.0, 300)})
    frame.to_csv(tmp_path / "train.csv", index=False)
    result = invoke("fit", tmp_path / "train.csv", "-o", tmp_path / "m.anomvae", *QUICK)
    assert result.exit_code == 0, result.output
    floors = json.loads(invoke("info", tmp_path / "m.anomvae", "--json").stdout)["variance_floors"]
    step = 1 / frame["count"].std(ddof=0)
    assert floors[:2] == [1e-3, 1e-3] and floors[2] == pytest.approx(step**2 / 12)
    text = invoke("info", tmp_path / "m.anomvae").stdout
    assert f"variance:   floor 0.001 on 2 features, {step**2 / 12:.3g} on 1 (from their value grids" in text


def test_progress_handler_advances_once_per_epoch(inliers):
    class Bar:
        label, steps = "", 0

        def update(self, n):
            self.steps += n

    import logging

    bar = Bar()
    handler = cli_options.EpochProgress(bar)
    logger = logging.getLogger("anomvae")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        detector = VAEAnomalyDetector(max_epochs=4, n_iter_no_change=None, random_state=0).fit(inliers)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    assert bar.steps == detector.n_epochs_ == 4 and bar.label.startswith("epoch 4 loss")


# ------------------------------------------------- installed console script


def _script():
    script = shutil.which("anomvae", path=os.path.dirname(sys.executable)) or shutil.which("anomvae")
    if script is None:
        pytest.fail("the anomvae console script is not installed (pip install -e .)")
    return script


def test_installed_script_end_to_end(tmp_path):
    script = _script()
    fit = subprocess.run([script, "fit", TRAIN, "-o", tmp_path / "m", "--id-column", "record_id", *QUICK],
                         capture_output=True, text=True)
    assert fit.returncode == 0, fit.stderr
    scored = subprocess.run([script, "score", tmp_path / "m", NEW, "--fail-on-anomaly"],
                            capture_output=True, text=True)
    out = pd.read_csv(io.StringIO(scored.stdout))
    assert len(out) == 550
    assert scored.returncode == (1 if out["is_anomaly"].any() else 0)
    bad = subprocess.run([script, "score", tmp_path / "m", TRAIN.parent], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith(("Usage:", "Error:"))


def test_scoring_a_csv_does_not_import_scikit_learn(model, tmp_path):
    # The scoring-only model skips scikit-learn's import time and memory;
    # the scores are the library's (see test_persistence).
    assert_runs_without(["score", str(model), str(NEW), "-o", str(tmp_path / "out.csv"), "-q"], "sklearn")
    out = pd.read_csv(tmp_path / "out.csv", dtype={"record_id": str}, float_precision="round_trip")
    frame = pd.read_csv(NEW, dtype={"record_id": str}, float_precision="round_trip")
    detector = anomvae.load(model)
    expected = -detector.score_samples(frame[list(detector.feature_names_in_)])
    np.testing.assert_array_equal(out["anomaly_score"].to_numpy(), expected)


@pytest.mark.parametrize("args", [["--help"], ["info", "MODEL"], ["fit", "--help"], ["score", "--help"]])
def test_help_and_info_do_not_import_torch(model, args):
    assert_runs_without([str(model) if a == "MODEL" else a for a in args], "torch")

"""The anomvae program as a whole (anomvae.cli.app): --help, exit codes, input and
internal errors, signals and a closed output, and the installed console script."""

import io
import os
import pydoc
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import NEW, QUICK, TRAIN, assert_input_error, assert_runs_without, invoke

from anomvae import cli


@pytest.mark.parametrize("args", [["--help"], ["info", "MODEL"], ["fit", "--help"], ["score", "--help"]])
def test_help_and_info_do_not_import_torch(model, args):
    assert_runs_without([str(model) if a == "MODEL" else a for a in args], "torch")


@pytest.mark.parametrize("args", [["--help"], ["-h"], []])
def test_help_succeeds_without_torch_or_numpy(args):
    # Bare anomvae too: help and exit 0 (click 8.2+ would exit 2).
    result = assert_runs_without(args, "torch", "numpy")
    assert "Usage:" in result.stdout and "Commands:" in result.stdout


def test_short_help_option_and_bare_command():
    full = invoke("--help")
    assert full.exit_code == 0
    assert "CSV tables and image folders" in " ".join(full.stdout.split())
    for args in (["-h"], []):
        result = invoke(*args)
        assert result.exit_code == 0 and result.stdout == full.stdout, args
    fit = invoke("fit", "-h")
    assert fit.exit_code == 0 and fit.stdout == invoke("fit", "--help").stdout


def test_python_dash_m_runs_the_program(tmp_path):
    # From the repository root, as a user of a checkout runs it; the exit
    # code comes through (2: bad input).
    root = Path(__file__).resolve().parents[1]
    shown = subprocess.run([sys.executable, "-m", "anomvae", "-h"], cwd=root, capture_output=True, text=True)
    assert shown.returncode == 0 and "Usage: python -m anomvae" in shown.stdout
    bad = subprocess.run([sys.executable, "-m", "anomvae", "info", str(TRAIN)], cwd=root, capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "not an anomvae model file" in bad.stderr


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


# ------------------------------------------ input and internal errors


def test_paths_that_are_not_files(model, tmp_path):
    for args in (["score", model, tmp_path], ["score", model, tmp_path / "nope.csv"],
                 ["fit", tmp_path, "-o", tmp_path / "m"], ["score", tmp_path / "nope", NEW]):
        result = invoke(*args)
        assert result.exit_code == 2 and "Error:" in result.stderr and "Traceback" not in result.output


def test_a_file_that_is_not_a_model(tmp_path):
    assert_input_error(invoke("score", TRAIN, NEW), "not an anomvae model file")
    assert_input_error(invoke("info", TRAIN), "not an anomvae model file")


def test_internal_errors_exit_3(model, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("anomvae.scoring.score_csv", broken)
    result = invoke("score", model, NEW)
    assert result.exit_code == 3
    assert "internal error: RuntimeError: boom" in result.stderr


# ------------------------- interruptions, signals and a closed output


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


# --------------------------------------------- --threads (fit, score, calibrate)


@pytest.fixture
def torch_threads():
    """torch's thread count before the test, restored after it."""
    import torch

    before = torch.get_num_threads()
    yield before
    torch.set_num_threads(before)


# Each command's first work, where the test reads torch's thread count.
THREADED = {
    "fit": ("anomvae.detector.VAEAnomalyDetector.fit", lambda m, tmp: ["fit", TRAIN, "-o", tmp / "m", "-q", *QUICK]),
    "score": ("anomvae.scoring.score_csv", lambda m, tmp: ["score", m, NEW, "-o", tmp / "s.csv", "-q"]),
    "calibrate": ("anomvae.tables.read_feature_rows",
                  lambda m, tmp: ["calibrate", m, NEW, "-o", tmp / "c.anomvae", "-q"]),
}


@pytest.mark.parametrize("command", list(THREADED))
def test_threads_reach_torch_before_the_work(model, tmp_path, monkeypatch, torch_threads, command):
    import torch

    target, args = THREADED[command]
    real = pydoc.locate(target)
    seen = []

    def recording(*a, **k):
        seen.append(torch.get_num_threads())
        return real(*a, **k)

    monkeypatch.setattr(target, recording)
    wanted = 3
    result = invoke(*args(model, tmp_path), "--threads", wanted)
    assert result.exit_code == 0, result.output
    torch.set_num_threads(wanted)
    default = invoke(*args(model, tmp_path))  # without --threads: one thread, whatever torch had
    assert default.exit_code == 0, default.output
    assert seen == [wanted, 1]


@pytest.mark.parametrize("command", list(THREADED))
def test_commands_keep_freed_memory_before_the_work(model, tmp_path, monkeypatch, command):
    import ctypes

    target, args = THREADED[command]
    real, events = pydoc.locate(target), []

    class Libc:
        def mallopt(self, parameter, value):
            events.append((parameter, value))
            return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda name: Libc())
    monkeypatch.setattr(target, lambda *a, **k: events.append("work") or real(*a, **k))
    result = invoke(*args(model, tmp_path))
    assert result.exit_code == 0, result.output
    # glibc's M_MMAP_THRESHOLD (-3) and M_TRIM_THRESHOLD (-1), set before any work
    assert events[:3] == [(-3, 32 << 20), (-1, 256 << 20), "work"]


def test_no_mallopt_is_no_error(monkeypatch):
    import ctypes

    from anomvae.allocator import keep_freed_memory

    monkeypatch.setattr(ctypes, "CDLL", lambda name: object())  # a C library without mallopt
    assert keep_freed_memory() is False
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(ctypes, "CDLL", lambda name: pytest.fail("no C library is opened off Linux"))
    assert keep_freed_memory() is False


@pytest.mark.parametrize("command", list(THREADED))
@pytest.mark.parametrize("value", ["0", "-1", "two", ""])
def test_a_bad_thread_count_is_a_usage_error(model, tmp_path, command, value):
    result = invoke(*THREADED[command][1](model, tmp_path), "--threads", value)
    assert result.exit_code == 2 and "Invalid value for '--threads'" in result.stderr, result.output


def test_the_thread_count_leaves_the_scores_alone(model, tmp_path, torch_threads):
    outputs = []
    for threads in ([], ["--threads", "2"], ["--threads", "1"]):
        path = tmp_path / f"s{len(outputs)}.csv"
        result = invoke("score", model, NEW, "-o", path, "-q", *threads)
        assert result.exit_code == 0, result.output
        outputs.append(path.read_bytes())
    assert outputs[0] == outputs[1] == outputs[2]

"""The example scripts: examples/monitor.sh as cron and systemd run it (a
bare environment, no virtual environment on PATH), and the monitoring
walkthrough's data, made by examples/monitoring_data.py."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXAMPLES, NEW

ROOT = Path(__file__).resolve().parents[1]
MONITOR = ROOT / "examples" / "monitor.sh"
BATCH = EXAMPLES / "cardio_batch.csv"
BASH = shutil.which("bash")


def _program(path, body):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    path.chmod(0o755)
    return path


@pytest.fixture
def anomvae_program(tmp_path):
    """An anomvae program that runs this checkout's package, as the
    console script of the README's set-up does, by an absolute path."""
    return _program(tmp_path / "bin" / "anomvae", f"#!{sys.executable}\nimport sys\n"
                    f"sys.path.insert(0, {str(ROOT)!r})\nfrom anomvae.cli import run\nrun()\n")


def run_monitor(script, *args, env):
    """``env -i [env] /abs/bash SCRIPT ARGS``: no PATH, HOME, LANG or virtual environment."""
    assert BASH and os.path.isabs(BASH)
    return subprocess.run([BASH, str(script), *map(str, args)], env=env, capture_output=True, text=True,
                          cwd="/")


def test_monitor_runs_from_a_bare_environment(model, anomvae_program, tmp_path):
    out = tmp_path / "out"
    job = run_monitor(MONITOR, model, BATCH, out, env={"ANOMVAE": str(anomvae_program)})
    assert job.returncode == 1, (job.stdout, job.stderr, (out / "anomvae.log").read_text())
    first, *flagged = job.stdout.splitlines()
    results = next(out.glob("anomalies-*.csv"))
    assert first.endswith(f": ANOMALIES in {BATCH}, see {results}")
    assert flagged == results.read_text().splitlines() and flagged[0].startswith("record_id,anomaly_score,")
    summary = json.loads(next(out.glob("summary-*.json")).read_text())
    assert summary["rows"] == 150 and summary["anomalies"] == len(flagged) - 1 > 0


def _checkout_copy(root):
    """A copy of examples/monitor.sh in a checkout at ``root``."""
    script = root / "examples" / "monitor.sh"
    script.parent.mkdir(parents=True)
    shutil.copy2(MONITOR, script)
    return script


def _stub(path, log):
    """A stand-in anomvae that notes its arguments and finds nothing."""
    return _program(path, f"#!/bin/sh\necho \"$0 $*\" > '{log}'\nexit 0\n")


def test_monitor_finds_the_checkouts_venv_then_path(tmp_path):
    log = tmp_path / "called"
    script = _checkout_copy(tmp_path / "repo")
    _stub(tmp_path / "elsewhere" / "anomvae", log)
    on_path = run_monitor(script, "m", "b.csv", tmp_path / "out", env={"PATH": f"{tmp_path}/elsewhere:/usr/bin:/bin"})
    assert on_path.returncode == 0 and "no anomalies in b.csv" in on_path.stdout, on_path.stderr
    assert log.read_text().startswith(f"{tmp_path}/elsewhere/anomvae score m b.csv --only-anomalies")
    venv = _stub(tmp_path / "repo" / ".venv" / "bin" / "anomvae", log)
    bare = run_monitor(script, "m", "b.csv", tmp_path / "out", env={})
    assert bare.returncode == 0 and "no anomalies in b.csv" in bare.stdout, bare.stderr
    assert log.read_text().startswith(f"{venv} score m b.csv")


@pytest.mark.parametrize("env, message", [
    ({}, "no anomvae program: ANOMVAE is not set"),
    ({"ANOMVAE": "/nonexistent/anomvae"}, "ANOMVAE=/nonexistent/anomvae is not an executable program"),
])
def test_monitor_without_a_program_exits_2_saying_so(tmp_path, env, message):
    job = run_monitor(_checkout_copy(tmp_path / "repo"), "m", "b.csv", tmp_path / "out", env=env)
    assert job.returncode == 2 and job.stdout == "" and message in job.stderr, job.stderr
    assert not (tmp_path / "out").exists()


def test_the_monitoring_data_is_what_the_script_makes(tmp_path):
    made = subprocess.run([sys.executable, str(ROOT / "examples" / "monitoring_data.py"), "--out", tmp_path],
                          capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    for name in ("cardio_clean.csv", "cardio_batch.csv"):
        assert (tmp_path / name).read_bytes() == (EXAMPLES / name).read_bytes(), name
    clean = (EXAMPLES / "cardio_clean.csv").read_text().splitlines()
    batch = BATCH.read_text().splitlines()
    new = NEW.read_text().splitlines()
    assert len(clean) == 401 and len(batch) == 151 and clean[0] == batch[0] == new[0].rsplit(",", 1)[0]
    labels = {line.split(",", 1)[0]: line.rsplit(",", 1)[1] for line in new[1:]}
    assert {labels[line.split(",", 1)[0]] for line in clean[1:]} == {"0"}
    assert sorted(line.split(",", 1)[0] for line in clean[1:] + batch[1:]) == sorted(labels)

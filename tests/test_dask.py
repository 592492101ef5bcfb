"""anomvae.dask on a 2-worker LocalCluster (processes, one thread each)."""

import io
import json
import os
import re
import signal
import warnings

import numpy as np
import pandas as pd
import pytest
from conftest import FEATURES, draw_rows, invoke
from sklearn.exceptions import ConvergenceWarning

pytest.importorskip("dask.dataframe")
pytest.importorskip("distributed")
pytest.importorskip("pyarrow")

import dask.dataframe as dd  # noqa: E402

import anomvae  # noqa: E402
from anomvae import dask as anomdask  # noqa: E402


@pytest.fixture(scope="module")
def client():
    with anomdask.client() as connected:
        yield connected


@pytest.fixture(scope="module")
def model_file(detector, tmp_path_factory):
    path = tmp_path_factory.mktemp("dask") / "model.anomvae"
    anomvae.save(detector, path)
    return str(path)


@pytest.fixture(scope="module")
def rows():
    frame = draw_rows(600, seed=5)
    frame.iloc[7, 2] = np.nan
    frame.iloc[500] *= 40  # a planted anomaly
    frame.insert(0, "key", [f"k{i:04d}" for i in range(len(frame))])
    return frame


def expected_scores(model, frame):
    scores = np.full(len(frame), np.nan)
    valid = frame[FEATURES].notna().all(axis=1).to_numpy()
    scores[valid] = -model.score_samples(frame.loc[valid, FEATURES])
    return scores


@pytest.mark.parametrize("npartitions", [1, 7])
def test_scores_are_the_in_memory_bits_in_any_partitioning(client, model_file, detector, rows, npartitions):
    result = anomdask.score(model_file, dd.from_pandas(rows, npartitions=npartitions), id_columns=["key"]).compute()
    assert list(result.columns) == ["key", "anomaly_score", "is_anomaly", "status"]
    assert result.index.equals(rows.index) and (result["key"] == rows["key"]).all()
    np.testing.assert_array_equal(result["anomaly_score"].to_numpy(), expected_scores(detector, rows))
    assert result.loc[7, "status"] == "not scored: empty or NaN value in column 'c'"
    assert pd.isna(result.loc[7, "is_anomaly"]) and result.loc[500, "is_anomaly"]
    assert (result.drop(index=7)["status"] == "scored").all()


def test_a_fitted_model_and_a_calibrated_one_give_p_values(client, detector, rows):
    calibrated = anomvae.load(_saved(detector))
    calibrated.calibrate(draw_rows(200, seed=9), fpr=0.05)
    result = anomdask.score(calibrated, dd.from_pandas(rows, npartitions=3)).compute()
    valid = rows[FEATURES].notna().all(axis=1)
    np.testing.assert_array_equal(result.loc[valid, "p_value"], calibrated.p_values(rows.loc[valid, FEATURES]))
    assert np.isnan(result.loc[7, "p_value"])
    assert (result.loc[valid, "is_anomaly"] == (result.loc[valid, "anomaly_score"] > calibrated.threshold_)).all()


def _saved(detector):
    import tempfile

    path = os.path.join(tempfile.mkdtemp(), "m.anomvae")
    anomvae.save(detector, path)
    return path


def test_invalid_rows_error_names_the_partition(client, model_file, rows):
    scored = anomdask.score(model_file, dd.from_pandas(rows, npartitions=3), invalid_rows="error")
    with pytest.raises(anomvae.errors.DataError, match=r"partition 0: 1 row\(s\) cannot be scored, index 7"):
        scored.compute()


def test_missing_and_text_columns_are_refused_before_computing(model_file, rows):
    with pytest.raises(anomvae.errors.DataError, match="lacks the column.*'e'"):
        anomdask.score(model_file, dd.from_pandas(rows.drop(columns="e"), npartitions=2))
    with pytest.raises(anomvae.errors.DataError, match="column 'a' holds"):
        anomdask.score(model_file, dd.from_pandas(rows.astype({"a": str}), npartitions=2))


def _kill_once(frame, marker):
    """Kill this worker process the first time any partition gets here."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return frame
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_worker_killed_mid_job_is_retried_and_the_output_is_complete(client, model_file, detector, rows,
                                                                     tmp_path):
    marker = str(tmp_path / "killed")
    ddf = dd.from_pandas(rows, npartitions=4).map_partitions(_kill_once, marker, meta=rows.iloc[:0])
    output = tmp_path / "out"
    summary = anomdask.score_to_parquet(model_file, ddf, str(output), id_columns=["key"], invalid_rows="mark")
    assert os.path.exists(marker)
    written = pd.read_parquet(output).sort_values("key").reset_index(drop=True)
    assert sorted(os.listdir(output)) == [f"part.{i:06d}.parquet" for i in range(4)]
    assert (written["key"] == rows["key"]).all()
    np.testing.assert_array_equal(written["anomaly_score"].to_numpy(), expected_scores(detector, rows))
    assert (summary.rows, summary.rows_scored, summary.rows_not_scored) == (600, 599, 1)
    assert summary.top_anomalies[0]["key"] == "k0500"


def _undo_worker_set_up():
    import torch

    anomdask._WORKER_READY = False
    torch.set_num_threads(2)
    calls = anomdask._ALLOCATOR_CALLS = []
    anomdask.keep_freed_memory = lambda trim_above: calls.append(trim_above) or True


def _worker_state():
    import torch

    from anomvae.allocator import keep_freed_memory

    anomdask.keep_freed_memory = keep_freed_memory
    return torch.get_num_threads(), anomdask._ALLOCATOR_CALLS


def test_workers_compute_on_one_thread_and_keep_freed_memory(client, model_file, rows):
    client.wait_for_workers(2, timeout=60)  # a worker killed by an earlier test may still be restarting
    client.run(_undo_worker_set_up)
    anomdask.score(model_file, dd.from_pandas(rows, npartitions=8)).compute()
    states = list(client.run(_worker_state).values())
    # Each worker that scored pinned torch to one thread and set up its
    # allocator once, however many partitions it computed.
    scored = [threads for threads, calls in states if calls == [anomdask.WORKER_TRIM_ABOVE]]
    assert scored and all(threads == 1 for threads in scored)
    assert all(calls in ([], [anomdask.WORKER_TRIM_ABOVE]) for _, calls in states)


def test_score_to_parquet_leaves_nothing_on_failure(client, model_file, rows, tmp_path):
    output = tmp_path / "out"
    with pytest.raises(anomvae.errors.DataError, match="cannot be scored"):
        anomdask.score_to_parquet(model_file, dd.from_pandas(rows, npartitions=3), str(output))
    assert not output.exists()


def test_fit_trains_on_a_sample_and_says_so(rows):
    ddf = dd.from_pandas(rows[FEATURES].dropna(), npartitions=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with pytest.warns(UserWarning, match=r"random sample of 200 of the 599 rows"):
            fitted = anomdask.fit(anomvae.VAEAnomalyDetector(max_epochs=2, random_state=0), ddf, max_rows=200,
                                  random_state=0)
    assert fitted.n_features_in_ == 5 and list(fitted.feature_names_in_) == FEATURES
    assert len(fitted.history_.train_loss) == 2


def test_cli_scores_parquet_into_a_folder(client, model_file, detector, rows, tmp_path):
    data = tmp_path / "data"
    dd.from_pandas(rows.drop(index=7), npartitions=3).to_parquet(data)
    output = tmp_path / "results"
    result = invoke("score", model_file, str(data / "*.parquet"), "--dask", "--scheduler",
                    client.scheduler.address, "-o", output, "--fail-on-anomaly")
    assert result.exit_code == 1, result.output
    assert re.search(r"\*\.parquet: 599 rows, [1-9]\d* anomalies \(threshold \d+\.\d{4} nats\)\n$", result.stderr)
    written = pd.read_parquet(output)
    assert list(written["row"]) == list(range(1, 600))
    np.testing.assert_array_equal(written["anomaly_score"], expected_scores(detector, rows.drop(index=7)))


def test_cli_leaves_no_folder_after_an_error(client, model_file, rows, tmp_path):
    data = tmp_path / "data.parquet"
    rows.to_parquet(data)
    output = tmp_path / "results"
    result = invoke("score", model_file, data, "--dask", "--scheduler", client.scheduler.address, "-o", output)
    assert result.exit_code == 2, result.output
    assert "cannot be scored" in result.stderr and not output.exists()


def test_cli_refuses_what_dask_does_not_do(model_file, tmp_path):
    data = tmp_path / "d.parquet"
    draw_rows(5, seed=0).to_parquet(data)
    result = invoke("score", model_file, data, "--dask", "--only-anomalies", "-o", tmp_path / "out")
    assert result.exit_code == 2 and "--only-anomalies cannot be used with --dask" in result.stderr
    result = invoke("score", model_file, data, "--dask")
    assert result.exit_code == 2 and "-o FOLDER" in result.stderr
    result = invoke("score", model_file, data, "--scheduler", "tcp://localhost:1")
    assert result.exit_code == 2 and "--scheduler applies with --dask" in result.stderr


def test_cli_names_the_extra_when_dask_is_missing(model_file, tmp_path, monkeypatch):
    import sys

    data = tmp_path / "d.parquet"
    draw_rows(5, seed=0).to_parquet(data)
    monkeypatch.setitem(sys.modules, "distributed", None)
    result = invoke("score", model_file, data, "--dask", "-o", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "pip install 'anomvae[dask]'" in result.stderr and not (tmp_path / "out").exists()


def test_cli_without_a_scheduler_starts_a_local_cluster_and_matches_csv_scoring(model_file, rows, tmp_path):
    data = tmp_path / "d.csv"
    rows.drop(index=7).to_csv(data, index=False)
    output = tmp_path / "out"
    result = invoke("score", model_file, data, "--dask", "--id-column", "key", "-o", output)
    plain = invoke("score", model_file, data, "--id-column", "key")
    assert result.exit_code == plain.exit_code == 0, result.output
    assert result.stderr == plain.stderr
    expected = pd.read_csv(io.StringIO(plain.stdout))
    written = pd.read_parquet(output)
    assert list(written.columns) == ["key", "anomaly_score", "is_anomaly", "status"]
    assert list(written["key"]) == list(expected["key"])
    np.testing.assert_array_equal(written["anomaly_score"], expected["anomaly_score"])


def _metric_values(path):
    from prometheus_client.parser import text_string_to_metric_families

    return {sample.name: sample.value for family in text_string_to_metric_families(path.read_text())
            for sample in family.samples if sample.name not in (
                "anomvae_run_duration_seconds", "anomvae_last_success_timestamp_seconds")}


def test_cli_summary_json_and_metrics_are_those_of_in_process_scoring(client, model_file, rows, tmp_path):
    data = tmp_path / "d.csv"
    rows.drop(index=7).to_csv(data, index=False)
    runs = {}
    for name, extra in {"dask": ["--dask", "--scheduler", client.scheduler.address, "-o", tmp_path / "out"],
                        "plain": ["-o", tmp_path / "plain.csv"]}.items():
        result = invoke("score", model_file, data, "--id-column", "key", "--summary-json", tmp_path / f"{name}.json",
                        "--metrics-file", tmp_path / f"{name}.prom", *extra)
        assert result.exit_code == 0, result.output
        runs[name] = result
    assert runs["dask"].stderr == runs["plain"].stderr
    summary = json.loads((tmp_path / "dask.json").read_text())
    assert summary == json.loads((tmp_path / "plain.json").read_text())
    assert summary["score_shift"]["n_batch"] == 599 and summary["top_anomalies"][0]["key"] == "k0500"
    assert _metric_values(tmp_path / "dask.prom") == _metric_values(tmp_path / "plain.prom")


def test_cli_a_failing_summary_leaves_no_results_folder(client, model_file, rows, tmp_path):
    data = tmp_path / "d.parquet"
    rows.drop(index=7).to_parquet(data)
    output = tmp_path / "out"
    result = invoke("score", model_file, data, "--dask", "--scheduler", client.scheduler.address, "-o", output,
                    "--summary-json", "/dev/full")
    assert result.exit_code == 2 and "cannot write /dev/full" in result.stderr, result.output
    assert not output.exists()
    result = invoke("score", model_file, str(tmp_path / "*.parquet"), "--dask", "-o", output, "--metrics-file", data)
    assert result.exit_code == 2 and "--metrics-file" in result.stderr and "a file of DATA" in result.stderr
    assert not output.exists() and pd.read_parquet(data).shape == (599, 6)
    for option in ("--summary-json", "--metrics-file"):
        # Renamed onto the folder once the Parquet files were in: the
        # command failed and left the folder.
        result = invoke("score", model_file, data, "--dask", "--scheduler", client.scheduler.address, "-o", output,
                        option, output)
        assert result.exit_code == 2 and f"-o and {option} name the same file" in result.stderr, result.output
        assert not output.exists()


def test_a_failing_local_cluster_run_says_one_line(model_file, rows, tmp_path):
    """Run as a monitoring job runs it: the local workers' own report of
    the failed task (a traceback) stays out of stderr."""
    import subprocess
    import sys

    data = tmp_path / "d.parquet"
    rows.to_parquet(data)  # row 7 holds a NaN
    output = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "anomvae", "score", model_file, str(data), "--dask", "-o",
                           str(output)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("Error: ") and done.stderr.count("\n") == 1, done.stderr
    assert "cannot be scored" in done.stderr and "Traceback" not in done.stderr and not output.exists()


def test_parquet_files_named_by_any_pattern_are_read_as_parquet_and_written_in_input_order(client, model_file, detector,
                                                                                   rows, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    kept = rows.drop(index=7)
    for i, start in enumerate((0, 200, 400)):
        kept.iloc[start:start + 200].to_parquet(data / f"chunk-{i}.parquet")
    ddf = anomdask.read(str(data / "chunk-*"))  # a pattern that does not say .parquet
    output = tmp_path / "out"
    anomdask.score_to_parquet(model_file, ddf.repartition(npartitions=12), str(output), id_columns=["key"])
    written = pd.read_parquet(output)  # files in name order
    assert len(os.listdir(output)) == 12 and list(written["key"]) == list(rows.drop(index=7)["key"])
    np.testing.assert_array_equal(written["anomaly_score"], expected_scores(detector, rows.drop(index=7)))


def test_cli_refuses_options_dask_would_ignore(model_file, tmp_path):
    data = tmp_path / "d.parquet"
    draw_rows(5, seed=0).to_parquet(data)
    for extra, named in ((["--delimiter", ";"], "--delimiter apply to CSV data"),
                         (["--threads", "2"], "--threads cannot be used with --dask")):
        result = invoke("score", model_file, data, "--dask", "-o", tmp_path / "out", *extra)
        assert result.exit_code == 2 and named in result.stderr, result.output
    assert not (tmp_path / "out").exists()


def test_an_existing_output_folder_is_refused(model_file, rows, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "old.parquet").write_text("x")
    with pytest.raises(anomvae.errors.OutputError, match="already exists"):
        anomdask.score_to_parquet(model_file, dd.from_pandas(rows, npartitions=2), str(tmp_path / "out"))
    assert os.listdir(tmp_path / "out") == ["old.parquet"]


def test_cli_names_data_that_is_not_there(model_file, tmp_path):
    result = invoke("score", model_file, str(tmp_path / "none" / "*.parquet"), "--dask", "-o", tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert "no file matches it" in result.stderr and not (tmp_path / "out").exists()

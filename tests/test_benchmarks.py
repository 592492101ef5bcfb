"""Smoke tests: each benchmark script runs end to end on a tiny subset."""

import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import speed  # noqa: E402
import tables  # noqa: E402

# Deselect with: pytest -m "not benchmark"
pytestmark = pytest.mark.benchmark


@pytest.mark.skipif(not tables.DEFAULT_DATA.exists(), reason="the shared ODDS datasets are not beside the checkout")
def test_odds_benchmark_runs(tmp_path):
    results = tables.main([
        "--quick", "--datasets", "wine", "glass", "--seeds", "1", "--models", "anomvae", "iforest",
        "--csv", str(tmp_path / "odds.csv"), "--no-docs",
    ])
    assert set(results["model"]) == {"anomvae", "iforest"} and len(results) == 4
    assert results["roc_auc"].between(0, 1).all()
    assert pd.read_csv(tmp_path / "odds.csv").shape[0] == 4
    table = tables.summarize(results)
    assert "| odds (2) | ROC-AUC |" in table and "| | rank |" in table and "odds, half A" in table
    assert "| odds | wine |" in tables.per_dataset(results)

    # A variant run alone, ranked against the peers' stored rows.
    variant = tables.main([
        "--quick", "--datasets", "wine", "--seeds", "1", "--models", "anomvae", "--params", '{"lr": 0.01}',
        "--csv", str(tmp_path / "variant.csv"), "--no-docs", "--compare", str(tmp_path / "odds.csv"),
    ])
    assert sorted(variant["model"]) == ["anomvae", "iforest"]  # glass and the old anomvae row left out
    assert (variant["dataset"] == "wine").all()
    assert variant.loc[variant.model == "iforest", "roc_auc"].item() == results.loc[
        (results.model == "iforest") & (results.dataset == "wine"), "roc_auc"].item()
    # Comparing against the file the run would overwrite is refused, file intact.
    before = (tmp_path / "odds.csv").read_bytes()
    with pytest.raises(SystemExit):
        tables.main(["--quick", "--datasets", "wine", "--models", "anomvae", "--no-docs",
                   "--csv", str(tmp_path / "odds.csv"), "--compare", str(tmp_path / "odds.csv")])
    assert (tmp_path / "odds.csv").read_bytes() == before


def test_odds_split_follows_the_protocol():
    import numpy as np

    X = np.arange(2000.0).reshape(1000, 2)
    y = (np.arange(1000) % 10 == 0).astype(int)
    X_train, X_test, y_train, y_test = tables.split(X, y, seed=0, cap=200)
    assert len(X_train) == 200 and len(X_test) == 200  # capped
    assert y_train.mean() == pytest.approx(0.1, abs=0.01) and y_test.mean() == pytest.approx(0.1, abs=0.01)
    assert not set(map(tuple, X_train)) & set(map(tuple, X_test))


def test_odds_seed_average_is_the_mean_of_its_members_scores():
    import numpy as np

    from anomvae import VAEAnomalyDetector

    X = np.random.RandomState(0).normal(size=(120, 3))
    params = {"max_epochs": 2, "n_iter_no_change": None, "validation_fraction": 0.0}
    average, scorer = tables.make_detector("anomvae", 1, params, members=2, seed_offset=1)
    assert [d.random_state for d in average.detectors] == [101, 201]
    singles = [VAEAnomalyDetector(random_state=r, **params).fit(X) for r in (101, 201)]
    expected = -(singles[0].score_samples(X) + singles[1].score_samples(X)) / 2
    np.testing.assert_allclose(scorer(average.fit(X), X), expected, rtol=1e-12)
    assert average.n_epochs_ == 4
    single, _ = tables.make_detector("anomvae", 1, params, seed_offset=2)
    assert single.random_state == 201


@pytest.mark.parametrize("extra", [["--members", "2"], ["--seed-offset", "1", "--no-docs"]])
def test_odds_keeps_seed_studies_out_of_the_defaults_report(extra, capsys):
    with pytest.raises(SystemExit):
        tables.main(["--models", "anomvae", *extra])
    assert "need --no-docs and a --csv of their own" in capsys.readouterr().err


def test_speed_benchmark_runs():
    pyod_rows, bound, cli = speed.main(["--quick"])
    assert pyod_rows["anomvae"]["rows_per_s"] > 0 and bound["bound_rows_per_s"] > 0
    assert cli["anomvae score"]["wall_s"] > 0 and cli["read_csv"]["rss_mb"] > 0
    assert cli["read and write only"]["wall_s"] > 0
    assert cli["import torch"]["cpu_s"] > 0 and cli["network in memory"]["cpu_s"] > 0 and cli["cores"] >= 1
    assert cli[f"anomvae score --threads {speed.THREADS}"]["wall_s"] > 0 and len(cli["load"]) == 2


def test_speed_benchmark_cli_part_alone(capsys):
    pyod_rows, bound, cli = speed.main(["--quick", "--cli-only"])
    assert pyod_rows is None and bound is None and cli["anomvae score"]["rss_mb"] > 0
    out = capsys.readouterr().out
    assert "target at most 4x" in out and "target under 400 MB" in out and "PyOD" not in out


def test_stopping_replay_matches_a_fit_that_stops_early():
    import numpy as np
    import stopping

    from anomvae import VAEAnomalyDetector

    X = np.random.RandomState(1).normal(size=(300, 4))
    params = {"random_state": 3, "kl_warmup": 2, "tol": 1e-2, "max_epochs": 80}
    stopped = VAEAnomalyDetector(n_iter_no_change=3, **params).fit(X)
    full = VAEAnomalyDetector(n_iter_no_change=None, **params).fit(X)
    best, stop, did_stop = stopping.replay(full.history_.val_loss, 3, 1e-2, 2)
    assert did_stop and stop < 80
    assert (best, stop) == (stopped.best_epoch_, stopped.n_epochs_)
    # The rule only decides where to cut: the losses up to there are the same.
    assert stopped.history_.val_loss == full.history_.val_loss[:stop]
    # A trajectory too short for the patience is reported as not stopped.
    assert stopping.replay([3.0, 2.0, 2.5], 5, 0.0, 1) == (2, 3, False)
    # By hand: epoch 4 resets the patience (a large gain), epoch 6 does not
    # (below tol) but is kept as the best; epoch 1 is not monitored.
    losses = [0.1, 10.0, 9.95, 9.0, 9.5, 8.99, 9.2, 9.3, 9.4]
    assert stopping.replay(losses, 3, 0.01, 2) == (6, 7, True)
    assert stopping.replay(losses, 4, 0.01, 2) == (6, 8, True)


@pytest.mark.skipif(not tables.DEFAULT_DATA.exists(), reason="the shared ODDS datasets are not beside the checkout")
def test_stopping_benchmark_runs(tmp_path):
    import stopping

    trajectories, summary = stopping.main([
        "--quick", "--datasets", "wine", "glass", "--seeds", "1", "--seed-offsets", "0", "1",
        "--trajectories", str(tmp_path / "t.csv"), "--csv", str(tmp_path / "s.csv"),
    ])
    assert len(trajectories) == 2 * 2 * 15 and trajectories["roc_auc"].between(0, 1).all()
    assert pd.read_csv(tmp_path / "t.csv").shape == trajectories.shape
    assert set(summary["seed_offset"]) == {0, 1}
    assert len(summary) == 2 * (len(stopping.PATIENCES) * len(stopping.TOLS) + 2)
    # The per-split best epoch is a ceiling no rule can pass.
    for _, rows in summary.groupby("seed_offset"):
        ceiling = rows.loc[rows.rule == "reference: best epoch of each split", "mean_roc_auc"].item()
        assert (rows["mean_roc_auc"] <= ceiling + 1e-12).all()
    # Replaying the stored trajectories gives the same report without fitting.
    _, again = stopping.main([
        "--datasets", "wine", "glass", "--seeds", "1", "--seed-offsets", "0", "1", "--replay",
        "--trajectories", str(tmp_path / "t.csv"), "--csv", str(tmp_path / "again.csv"),
    ])
    pd.testing.assert_frame_equal(again.reset_index(drop=True), summary.reset_index(drop=True))
    with pytest.raises(SystemExit):
        stopping.main(["--quick", "--datasets", "wine", "--params", '{"max_epochs": 5}'])


@pytest.mark.skipif(not tables.DEFAULT_DATA.exists(), reason="the shared ODDS datasets are not beside the checkout")
def test_ensembles_average_saved_scores(tmp_path, capsys):
    import ensembles
    import numpy as np
    from sklearn.metrics import roc_auc_score

    runs = [tables.main([
        "--quick", "--datasets", "wine", "glass", "--seeds", "1", "--models", "anomvae", "--no-docs",
        "--seed-offset", str(m), "--scores", str(tmp_path / "scores"), "--csv", str(tmp_path / f"{m}.csv"),
    ]) for m in (0, 1)]
    assert sorted(p.name for p in (tmp_path / "scores").iterdir()) == [
        "glass-0-0.npz", "glass-0-1.npz", "params.json", "wine-0-0.npz", "wine-0-1.npz"]
    rows, summary = ensembles.main([str(tmp_path / "scores"), "--members", "1", "2"])
    assert list(rows["offsets"]) == ["0", "1", "0 1"]
    for m, run in enumerate(runs):  # one member: the run's own ROC-AUC
        assert rows.loc[m, "mean_roc_auc"] == pytest.approx(run["roc_auc"].mean(), abs=1e-12)
    pair = []
    for name in ("glass", "wine"):
        first, second = (np.load(tmp_path / "scores" / f"{name}-0-{m}.npz") for m in (0, 1))
        pair.append(roc_auc_score(first["y"], (first["scores"] + second["scores"]) / 2))
    assert rows.loc[2, "mean_roc_auc"] == pytest.approx(np.mean(pair), abs=1e-12)
    assert summary.loc[2, "choices"] == 1
    # An offset missing for one split is left out; asking for more members than remain is an error.
    (tmp_path / "scores" / "wine-0-1.npz").unlink()
    capsys.readouterr()
    with pytest.raises(SystemExit):
        ensembles.main([str(tmp_path / "scores"), "--members", "2"])
    assert "2 members need 2 seed offsets; 1 are complete: [0]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tables.main(["--quick", "--datasets", "wine", "--models", "anomvae", "--no-docs", "--members", "2",
                   "--scores", str(tmp_path / "s2"), "--csv", str(tmp_path / "m.csv")])
    assert "--scores saves single fits' scores" in capsys.readouterr().err
    # The folder keeps one variant's scores: fits with other --params are refused before they run.
    before = sorted(p.name for p in (tmp_path / "scores").iterdir())
    with pytest.raises(SystemExit):
        tables.main(["--quick", "--datasets", "wine", "--seeds", "1", "--models", "anomvae", "--no-docs",
                   "--seed-offset", "2", "--params", '{"trim_by": "loss"}',
                   "--scores", str(tmp_path / "scores"), "--csv", str(tmp_path / "2.csv")])
    assert '--params {"max_epochs": 3}, not {"max_epochs": 3, "trim_by": "loss"}' in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "scores").iterdir()) == before


def test_outside_benchmark_runs(capsys):
    import outside

    results = outside.main(["--quick", "--variant", 'loss={"trim_by": "loss"}'])
    assert list(results.model) == ["anomvae", "loss", "iforest"]
    assert results.roc_auc.between(0, 1).all() and (results.case == "digits 0-4 | 5-9").all()
    out = capsys.readouterr().out
    ahead = [f"{int(results.roc_auc[i] > results.roc_auc[2])} of 1" for i in (0, 1)]
    assert f"| cases ahead of IsolationForest | {ahead[0]} | {ahead[1]} |  |" in out


def test_outside_split_contaminates_both_parts_without_overlap():
    import numpy as np
    import outside

    normal, anomalies = np.arange(1000.0)[:, None], -np.arange(1, 501.0)[:, None]
    X_train, X_test, y_test = outside.split(normal, anomalies, 0.05, seed=3)
    train_anomalies = X_train[X_train[:, 0] < 0]
    assert len(X_train) == 700 + len(train_anomalies) and len(X_test) == 300 + y_test.sum()
    assert round(len(train_anomalies) / len(X_train), 2) == 0.05 and round(y_test.mean(), 2) == 0.05
    assert (X_test[y_test == 1, 0] < 0).all() and (X_test[y_test == 0, 0] >= 0).all()
    assert not set(X_train[:, 0]) & set(X_test[:, 0])
    assert outside.patches("china.jpg").shape == (53 * 80, 64)


@pytest.mark.parametrize("argv, message", [
    (["--variant", "anomvae={}"], "NAME not anomvae or iforest"),
    (["--variant", "kl"], "expected NAME="),
    (["--variant", "kl=[1]"], "JSON object"),
    (["--variant", "kl={bad"], "not JSON"),
    (["--variant", 'kl={"random_state": 1}'], "without random_state"),
    (["--variant", 'kl={"trim_by": "score"}'], "trim_by"),
    (["--variant", 'kl={"hidden": [8]}'], "hidden"),
    (["--variant", "a={}", "--variant", "a={}"], "names repeat"),
    (["--seeds", "0"], "--seeds"),
    (["--rate", "0.5"], "--rate"),
])
def test_outside_refuses_bad_arguments(argv, message, capsys):
    import outside

    with pytest.raises(SystemExit):
        outside.main(["--quick", *argv])
    assert message in capsys.readouterr().err


def test_digits_benchmark_quick_run_beats_chance_clearly():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "digits.py"
    spec = importlib.util.spec_from_file_location("digits_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.main(["--quick"])
    assert [row[0] for row in rows] == [0, 1]
    for digit, n_train, n_test, vae_auc, forest_auc in rows:
        assert vae_auc > 0.85, (digit, vae_auc)

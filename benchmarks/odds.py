"""Detection quality on the 20 ODDS datasets, anomvae against its peers.

Protocol (ADBench's unsupervised setting): for each dataset and seed, a
stratified 70/30 train/test split; every detector is fitted on the training
part without labels (anomalies included) and scores the test part; ROC-AUC
and average precision are computed against the test labels. Train and test
parts are capped at 20,000 rows by stratified subsampling. Peers measured in
the same run: scikit-learn's IsolationForest, and PyOD's VAE, AutoEncoder
and ECOD when pyod is installed (``pip install -e '.[bench]'``), all with
their default parameters.

    python benchmarks/odds.py                      # full run, writes docs/benchmarks.md
    python benchmarks/odds.py --quick              # smoke run on a tiny subset
    python benchmarks/odds.py --models anomvae --params '{"n_score_samples": 32}' --no-docs \
        --csv /tmp/variant.csv --compare benchmarks/results/odds.csv   # a variant against stored peers
    python benchmarks/odds.py --models anomvae --seed-offset 1 --no-docs \
        --csv /tmp/seed1.csv --compare benchmarks/results/odds.csv     # the defaults with other network seeds
    python benchmarks/odds.py --models anomvae --members 2 --no-docs \
        --csv /tmp/pair.csv --compare benchmarks/results/odds.csv      # mean score of two seeds' fits
    python benchmarks/odds.py --models anomvae --seed-offset 1 --no-docs --scores /tmp/scores \
        --csv /tmp/seed1.csv                                           # keep the test scores for ensembles.py

Results: a CSV of raw rows (``--csv``, default benchmarks/results/odds.csv)
and, unless ``--no-docs``, the summary table between the markers in
docs/benchmarks.md.
"""

import argparse
import json
import os
import platform
import sys
import time
import warnings
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import train_test_split

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "datasets" / "odds"
CAP = 20_000
MARK_BEGIN, MARK_END = "<!-- odds-table:begin -->", "<!-- odds-table:end -->"


def cap_rows(X, y, cap, seed):
    """Stratified subsample of at most ``cap`` rows."""
    if len(X) <= cap:
        return X, y
    X, _, y, _ = train_test_split(X, y, train_size=cap, stratify=y, random_state=seed)
    return X, y


def split(X, y, seed, cap=CAP):
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.3, stratify=y, random_state=seed)
    X_train, y_train = cap_rows(X_train, y_train, cap, seed)
    X_test, y_test = cap_rows(X_test, y_test, cap, seed)
    return X_train, X_test, y_train, y_test


def load_split(path, seed, quick=False):
    """One ODDS ``.npz`` file split by :func:`split` (parts capped at 400
    rows with ``quick``): ``X_train, X_test, y_train, y_test``."""
    data = np.load(path)
    X, y = data["X"].astype(np.float64), data["y"].astype(int)
    return split(X, y, seed, cap=400 if quick else CAP)


class SeedAverage:
    """anomvae fitted with several ``random_state`` values; the score is the
    members' mean negative ELBO.  Used to measure how much the results move
    with the network's seed, and what averaging over seeds buys."""

    def __init__(self, detectors):
        self.detectors = detectors

    def fit(self, X):
        for detector in self.detectors:
            detector.fit(X)
        return self

    def score_samples(self, X):
        return np.mean([detector.score_samples(X) for detector in self.detectors], axis=0)

    @property
    def n_epochs_(self):
        return sum(detector.n_epochs_ for detector in self.detectors)


def peer_roc_auc(results_csv):
    """Per-dataset mean ROC-AUC of every model but anomvae in a results CSV
    (datasets as rows, models as columns)."""
    peers = pd.read_csv(results_csv)
    peers = peers[peers.model != "anomvae"]
    return peers.groupby(["dataset", "model"]).roc_auc.mean().unstack("model")


def rank_against(peer_auc, auc):
    """anomvae's mean ROC-AUC and mean rank, and IsolationForest's mean
    rank, once anomvae's per-dataset ROC-AUC ``auc`` joins the peers'."""
    table = peer_auc.loc[auc.index].copy()
    table["anomvae"] = auc
    ranks = table.rank(axis=1, ascending=False).mean()
    return auc.mean(), ranks["anomvae"], ranks.get("iforest", np.nan)


def make_detector(name, seed, params, members=1, seed_offset=0):
    """A fresh detector and a function turning it into anomaly scores.

    anomvae's ``random_state`` is ``seed + 100 * seed_offset``; with
    ``members`` > 1 it is a :class:`SeedAverage` of the fits with offsets
    ``seed_offset`` to ``seed_offset + members - 1``.
    """
    if name == "anomvae":
        from anomvae import VAEAnomalyDetector

        detectors = [VAEAnomalyDetector(random_state=seed + 100 * (seed_offset + m), **params)
                     for m in range(members)]
        det = detectors[0] if members == 1 else SeedAverage(detectors)
        return det, lambda d, X: -d.score_samples(X)
    if name == "iforest":
        from sklearn.ensemble import IsolationForest

        return IsolationForest(random_state=seed), lambda d, X: -d.score_samples(X)
    if name in ("pyod_vae", "pyod_ae"):
        from pyod.models.auto_encoder import AutoEncoder
        from pyod.models.vae import VAE

        cls = VAE if name == "pyod_vae" else AutoEncoder
        return cls(random_state=seed, verbose=0, device="cpu"), lambda d, X: d.decision_function(X)
    if name == "ecod":
        from pyod.models.ecod import ECOD

        return ECOD(), lambda d, X: d.decision_function(X)
    if name == "copod":
        from pyod.models.copod import COPOD

        return COPOD(), lambda d, X: d.decision_function(X)
    if name == "knn":
        from pyod.models.knn import KNN

        return KNN(), lambda d, X: d.decision_function(X)
    raise ValueError(f"unknown model {name!r}")


def available_models():
    models = ["anomvae", "iforest"]
    try:
        import pyod  # noqa: F401
    except ImportError:
        print("pyod is not installed: PyOD peers are skipped (pip install -e '.[bench]')", file=sys.stderr)
    else:
        models += ["pyod_vae", "pyod_ae", "ecod", "copod", "knn"]
    return models


def run_one(path, seed, model, params, quick, members=1, seed_offset=0, scores_dir=None):
    X_train, X_test, y_train, y_test = load_split(path, seed, quick)
    detector, scorer = make_detector(model, seed, params, members, seed_offset)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        detector.fit(X_train)
        fit_s = time.perf_counter() - start
        start = time.perf_counter()
        scores = scorer(detector, X_test)
        score_s = time.perf_counter() - start
    extra = {}
    if model == "anomvae":
        extra = {"epochs": detector.n_epochs_}
        if scores_dir is not None:
            # The test part's anomaly scores, for benchmarks/ensembles.py.
            np.savez(Path(scores_dir) / f"{path.stem}-{seed}-{seed_offset}.npz", scores=scores, y=y_test)
    return {
        "dataset": path.stem, "seed": seed, "model": model, "n_train": len(X_train), "n_features": X_train.shape[1],
        "roc_auc": roc_auc_score(y_test, scores), "ap": average_precision_score(y_test, scores),
        "fit_s": fit_s, "score_s": score_s, **extra,
    }


def summarize(results):
    """Per-dataset mean ROC-AUC per model, plus mean ROC-AUC, AP, rank and seconds."""
    per = results.groupby(["dataset", "model"])[["roc_auc", "ap", "fit_s", "score_s"]].mean()
    auc = per["roc_auc"].unstack("model")
    ranks = auc.rank(axis=1, ascending=False)
    models = list(auc.columns)
    totals = results.groupby(["model", "seed"])[["fit_s", "score_s"]].sum().groupby("model").mean()
    lines = ["| dataset | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
    for dataset, row in auc.iterrows():
        best = row.max()
        cells = [f"**{v:.3f}**" if v == best else f"{v:.3f}" for v in row]
        lines.append(f"| {dataset} | " + " | ".join(cells) + " |")
    mean_ap = per["ap"].unstack("model").mean()
    lines.append("| **mean ROC-AUC** | " + " | ".join(f"{auc[m].mean():.3f}" for m in models) + " |")
    lines.append("| mean AP | " + " | ".join(f"{mean_ap[m]:.3f}" for m in models) + " |")
    lines.append("| mean rank | " + " | ".join(f"{ranks[m].mean():.2f}" for m in models) + " |")
    fit_s = " | ".join(f"{totals.loc[m, 'fit_s']:.1f}" for m in models)
    score_s = " | ".join(f"{totals.loc[m, 'score_s']:.2f}" for m in models)
    lines.append(f"| fit s (all datasets, one seed) | {fit_s} |")
    lines.append(f"| score s (all datasets, one seed) | {score_s} |")
    return "\n".join(lines)


def write_docs(table, args, n_datasets):
    doc = ROOT / "docs" / "benchmarks.md"
    text = doc.read_text() if doc.exists() else f"# Benchmarks\n\n{MARK_BEGIN}\n{MARK_END}\n"
    head = (
        f"Measured {date.today().isoformat()} on {platform.machine()} with {os.cpu_count()} CPU cores, "
        f"{n_datasets} datasets x {args.seeds} seeds, by `python benchmarks/odds.py`. "
        "Cells: ROC-AUC on the test part, mean over seeds; bold = best on that dataset.\n\n"
    )
    begin, end = text.index(MARK_BEGIN) + len(MARK_BEGIN), text.index(MARK_END)
    doc.write_text(text[:begin] + "\n" + head + table + "\n" + text[end:])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of ODDS .npz files")
    parser.add_argument("--datasets", nargs="*", help="dataset names (default: all)")
    parser.add_argument("--models", nargs="*", help="models to run (default: all available)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--params", default="{}", help="JSON of VAEAnomalyDetector parameters")
    parser.add_argument("--members", type=int, default=1,
                        help="average anomvae's negative ELBO over this many fits with different random_state")
    parser.add_argument("--seed-offset", type=int, default=0,
                        help="anomvae's random_state is the split seed + 100 x this (to measure seed variance)")
    parser.add_argument("--scores", type=Path, metavar="DIR",
                        help="also save anomvae's test scores per dataset and seed here (for ensembles.py); "
                        "the folder records --params and refuses fits with others")
    parser.add_argument("--quick", action="store_true", help="tiny subset for smoke tests")
    parser.add_argument("--jobs", type=int, default=1, help="parallel jobs (timings are then not comparable)")
    parser.add_argument("--csv", type=Path, default=ROOT / "benchmarks" / "results" / "odds.csv")
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--compare", type=Path, help="earlier results CSV: its rows for models not run now "
                        "(same datasets and seeds) join the summary, so a variant is ranked against peers "
                        "without rerunning them")
    args = parser.parse_args(argv)

    if args.members < 1 or args.seed_offset < 0:
        parser.error("--members must be at least 1 and --seed-offset at least 0")
    if (args.members, args.seed_offset) != (1, 0) and (
            not args.no_docs or args.csv.resolve() == parser.get_default("csv").resolve()):
        # Their rows are labelled anomvae like the defaults' rows: keep them
        # out of the table and the CSV that report the defaults.
        parser.error("--members and --seed-offset need --no-docs and a --csv of their own")

    paths = sorted(args.data.glob("*.npz"))
    if args.datasets:
        paths = [p for p in paths if p.stem in args.datasets]
    if not paths:
        parser.error(f"no datasets found in {args.data}")
    models = args.models or available_models()
    params = json.loads(args.params)
    if args.compare:
        if args.compare.resolve() == args.csv.resolve():
            parser.error("--compare names the file --csv would overwrite; give --csv another path")
        earlier = pd.read_csv(args.compare)
    if args.quick:
        params = {"max_epochs": 3, **params}
    if args.scores:
        if args.members != 1:
            parser.error("--scores saves single fits' scores; combine them with benchmarks/ensembles.py")
        args.scores.mkdir(parents=True, exist_ok=True)
        # Score files are named by dataset, seed and offset only; the folder
        # records the parameters, so fits of different variants never mix.
        tag = args.scores / "params.json"
        if tag.exists() and json.loads(tag.read_text()) != params:
            parser.error(f"{args.scores} holds scores of fits with --params {tag.read_text().strip()}, "
                         f"not {json.dumps(params, sort_keys=True)}; give --scores another folder")
        tag.write_text(json.dumps(params, sort_keys=True) + "\n")
    tasks = [(p, s, m) for p in paths for s in range(args.seeds) for m in models]
    if args.jobs > 1:
        from joblib import Parallel, delayed

        def job(*task):
            import torch

            torch.set_num_threads(1)
            return run_one(*task, params, args.quick, args.members, args.seed_offset, args.scores)

        rows = Parallel(n_jobs=args.jobs)(delayed(job)(*t) for t in tasks)
    else:
        rows = []
        for task in tasks:
            rows.append(run_one(*task, params, args.quick, args.members, args.seed_offset, args.scores))
            r = rows[-1]
            print(f"{r['dataset']:12s} seed {r['seed']} {r['model']:9s} ROC-AUC {r['roc_auc']:.3f} "
                  f"AP {r['ap']:.3f} fit {r['fit_s']:.1f}s", file=sys.stderr)
    results = pd.DataFrame(rows)
    if args.compare:
        earlier = earlier[~earlier.model.isin(models) & earlier.dataset.isin(results.dataset)
                          & earlier.seed.isin(results.seed)]
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    results.to_csv(args.csv, index=False)
    if args.compare:
        results = pd.concat([results, earlier], ignore_index=True)
    table = summarize(results)
    print(table)
    if not args.no_docs:
        write_docs(table, args, len(paths))
    return results


if __name__ == "__main__":
    main()

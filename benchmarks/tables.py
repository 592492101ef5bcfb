"""Detection quality on two suites of tables, anomvae against its peers.

Suites: the 20 classic ODDS tables (``../shared/datasets/odds``) and 22
dense embedding tables (``../shared/datasets/embeddings``: MVTec-AD,
CIFAR-10 and SVHN images and one text set, embedded by pretrained networks).

Protocol (ADBench's unsupervised setting): for each dataset and seed, a
stratified 70/30 train/test split; every detector is fitted on the training
part without labels (anomalies included) and scores the test part; ROC-AUC
and average precision are computed against the test labels. Train and test
parts are capped at 20,000 rows by stratified subsampling. Peers measured in
the same run: scikit-learn's IsolationForest, and with the ``bench`` extra
(``pip install -e '.[bench]'``) PyOD's ECOD, COPOD, KNN, VAE and
AutoEncoder, all with their default parameters.

Each suite's datasets are split into two halves by name (``--half A`` or
``B``: sorted names, alternately), so that a change can be chosen on one
half and confirmed on the other; the summary reports both halves.

Every job runs with ``--threads`` torch/BLAS threads (default 1); ``--jobs``
runs that many jobs at once. Fit and score seconds are wall-clock.

    python benchmarks/tables.py --jobs 2                 # full run, writes docs/benchmarks.md
    python benchmarks/tables.py --quick                  # smoke run on a tiny subset
    python benchmarks/tables.py --models anomvae --params '{"n_score_samples": 32}' --no-docs \
        --csv /tmp/variant.csv --compare benchmarks/results/tables.csv   # a variant against stored peers
    python benchmarks/tables.py --models anomvae --half A --no-docs --csv /tmp/a.csv \
        --compare benchmarks/results/tables.csv          # choose on half A ...
    python benchmarks/tables.py --models anomvae --seed-offset 1 --no-docs --scores /tmp/scores \
        --csv /tmp/seed1.csv                             # keep the test scores for ensembles.py

Results: a CSV of raw rows (``--csv``, default benchmarks/results/tables.csv)
and, unless ``--no-docs``, the summary tables between the markers in
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
DATASETS = ROOT.parent / "shared" / "datasets"
SUITES = {"odds": DATASETS / "odds", "embeddings": DATASETS / "embeddings"}
DEFAULT_DATA = SUITES["odds"]
CAP = 20_000
MARK_BEGIN, MARK_END = "<!-- tables:begin -->", "<!-- tables:end -->"


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
    """anomvae fitted with several ``random_state`` values. The score is the
    members' mean ELBO (``combine="mean"``), or their log-mean-exp
    (``"lme"``): a lower bound on the log-likelihood of the equal mixture of
    the members' models, so still an ELBO in nats. Used to measure how much
    the results move with the network's seed, and what averaging buys."""

    def __init__(self, detectors, combine="mean"):
        self.detectors, self.combine = detectors, combine

    def fit(self, X):
        for detector in self.detectors:
            detector.fit(X)
        return self

    def score_samples(self, X):
        scores = np.array([detector.score_samples(X) for detector in self.detectors])
        if self.combine == "lme":
            from scipy.special import logsumexp

            return logsumexp(scores, axis=0) - np.log(len(scores))
        return scores.mean(axis=0)

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


def make_detector(name, seed, params, members=1, seed_offset=0, combine="mean"):
    """A fresh detector and a function turning it into anomaly scores.

    anomvae's ``random_state`` is ``seed + 100 * seed_offset``; with
    ``members`` > 1 it is a :class:`SeedAverage` of the fits with offsets
    ``seed_offset`` to ``seed_offset + members - 1``.
    """
    if name == "anomvae":
        from anomvae import VAEAnomalyDetector

        detectors = [VAEAnomalyDetector(random_state=seed + 100 * (seed_offset + m), **params)
                     for m in range(members)]
        det = detectors[0] if members == 1 else SeedAverage(detectors, combine)
        return det, lambda d, X: -d.score_samples(X)
    if name == "iforest":
        from sklearn.ensemble import IsolationForest

        return IsolationForest(random_state=seed), lambda d, X: -d.score_samples(X)
    if name in ("pyod_vae", "pyod_ae"):
        from pyod.models.auto_encoder import AutoEncoder
        from pyod.models.vae import VAE

        cls = VAE if name == "pyod_vae" else AutoEncoder
        return cls(random_state=seed, verbose=0, device="cpu"), lambda d, X: d.decision_function(X)
    pyod_models = {"ecod": "pyod.models.ecod:ECOD", "copod": "pyod.models.copod:COPOD", "knn": "pyod.models.knn:KNN"}
    if name in pyod_models:
        import importlib

        module, cls = pyod_models[name].split(":")
        return getattr(importlib.import_module(module), cls)(), lambda d, X: d.decision_function(X)
    raise ValueError(f"unknown model {name!r}")


PEERS = ["iforest", "ecod", "copod", "knn", "pyod_vae", "pyod_ae"]


def available_models():
    models = ["anomvae", "iforest"]
    try:
        import pyod  # noqa: F401
    except ImportError:
        print("pyod is not installed: PyOD peers are skipped (pip install -e '.[bench]')", file=sys.stderr)
    else:
        models += PEERS[1:]
    return models


def half_of(name, names):
    """``"A"`` or ``"B"``: the half of its suite a dataset belongs to (sorted
    names, alternately)."""
    return "AB"[sorted(names).index(name) % 2]


def datasets(suites, data=None, names=None, half=None):
    """``[(suite, path, half)]`` of the chosen suites (or of the folder ``data``)."""
    folders = {Path(data).name: Path(data)} if data else {s: SUITES[s] for s in suites}
    found = []
    for suite, folder in folders.items():
        paths = sorted(folder.glob("*.npz"))
        stems = [p.stem for p in paths]
        for path in paths:
            if (not names or path.stem in names) and (half is None or half_of(path.stem, stems) == half):
                found.append((suite, path, half_of(path.stem, stems)))
    return found


def run_one(suite, path, half, seed, model, params, quick, members=1, seed_offset=0, scores_dir=None,
            combine="mean"):
    X_train, X_test, y_train, y_test = load_split(path, seed, quick)
    detector, scorer = make_detector(model, seed, params, members, seed_offset, combine)
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
        "suite": suite, "half": half, "dataset": path.stem, "seed": seed, "model": model,
        "n_train": len(X_train), "n_features": X_train.shape[1],
        "roc_auc": roc_auc_score(y_test, scores), "ap": average_precision_score(y_test, scores),
        "fit_s": fit_s, "score_s": score_s, **extra,
    }


def _cells(row, fmt, bold_max=True):
    best = row.max() if bold_max else row.min()
    return [f"**{v:{fmt}}**" if v == best else f"{v:{fmt}}" for v in row]


def per_dataset(results):
    """Markdown: each dataset's ROC-AUC per model (mean over seeds, best in
    bold), and its mean fit seconds per model."""
    per = results.groupby(["suite", "dataset", "model"])[["roc_auc", "fit_s"]].mean()
    auc, fit = per["roc_auc"].unstack("model"), per["fit_s"].unstack("model")
    models = list(auc.columns)
    lines = ["| suite | dataset | " + " | ".join(models) + " | fit s: " + " | ".join(models) + " |",
             "|---" * (2 * len(models) + 2) + "|"]
    for (suite, dataset), row in auc.iterrows():
        seconds = [f"{v:.1f}" for v in fit.loc[(suite, dataset)]]
        lines.append(f"| {suite} | {dataset} | " + " | ".join(_cells(row, ".3f")) + " | " + " | ".join(seconds) + " |")
    return "\n".join(lines)


def summarize(results):
    """Markdown: per suite, per half and over everything, each model's mean
    ROC-AUC, mean AP, mean rank (1 = best on a dataset) and fit seconds
    (summed over the datasets, mean over seeds)."""
    per = results.groupby(["suite", "half", "dataset", "model"])[["roc_auc", "ap"]].mean()
    auc = per["roc_auc"].unstack("model")
    ranks = auc.rank(axis=1, ascending=False)
    ap = per["ap"].unstack("model")
    seconds = results.groupby(["suite", "half", "dataset", "model"])["fit_s"].mean().unstack("model")
    models = list(auc.columns)
    groups = [("all", slice(None))]
    for suite in auc.index.get_level_values("suite").unique():
        groups.append((suite, suite))
        groups += [(f"{suite}, half {h}", (suite, h)) for h in ("A", "B")]
    lines = ["| datasets | measure | " + " | ".join(models) + " |", "|---" * (len(models) + 2) + "|"]
    present = set(auc.index.droplevel("dataset")) | set(auc.index.get_level_values("suite"))
    for label, key in groups:
        if key != slice(None) and key not in present:
            continue
        pick = (lambda t: t.loc[key]) if key != slice(None) else (lambda t: t)
        n = len(pick(auc))
        lines.append(f"| {label} ({n}) | ROC-AUC | " + " | ".join(_cells(pick(auc).mean(), ".3f")) + " |")
        lines.append("| | AP | " + " | ".join(_cells(pick(ap).mean(), ".3f")) + " |")
        lines.append("| | rank | " + " | ".join(_cells(pick(ranks).mean(), ".2f", bold_max=False)) + " |")
        lines.append("| | fit s | " + " | ".join(f"{v:.1f}" for v in pick(seconds).sum()) + " |")
    return "\n".join(lines)


def write_docs(text, args, n_datasets):
    doc = ROOT / "docs" / "benchmarks.md"
    current = doc.read_text() if doc.exists() else f"# Benchmarks\n\n{MARK_BEGIN}\n{MARK_END}\n"
    head = (
        f"Measured {date.today().isoformat()} on {platform.machine()} with {os.cpu_count()} CPU cores, "
        f"{args.jobs} job(s) at a time with {args.threads} thread(s) each, {n_datasets} datasets x "
        f"{args.seeds} seeds, by `python benchmarks/tables.py --jobs {args.jobs}`. Cells: test ROC-AUC and AP, "
        "mean over datasets of the mean over seeds; rank among the models on each dataset (1 = best); "
        "fit seconds summed over the datasets; bold = best.\n\n"
    )
    begin, end = current.index(MARK_BEGIN) + len(MARK_BEGIN), current.index(MARK_END)
    doc.write_text(current[:begin] + "\n" + head + text + "\n" + current[end:])


def _parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", nargs="*", choices=sorted(SUITES), default=sorted(SUITES),
                        help="suites to run (default: both)")
    parser.add_argument("--data", type=Path, help="a folder of .npz files to run instead of the suites")
    parser.add_argument("--datasets", nargs="*", help="dataset names (default: all)")
    parser.add_argument("--half", choices=["A", "B"], help="only this half of each suite's datasets")
    parser.add_argument("--models", nargs="*", help="models to run (default: all available)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--params", default="{}", help="JSON of VAEAnomalyDetector parameters")
    parser.add_argument("--members", type=int, default=1,
                        help="combine anomvae's scores over this many fits with different random_state")
    parser.add_argument("--combine", choices=["mean", "lme"], default="mean",
                        help="how --members combines ELBOs: their mean, or their log-mean-exp (mixture bound)")
    parser.add_argument("--seed-offset", type=int, default=0,
                        help="anomvae's random_state is the split seed + 100 x this (to measure seed variance)")
    parser.add_argument("--scores", type=Path, metavar="DIR",
                        help="also save anomvae's test scores per dataset and seed here (for ensembles.py); "
                        "the folder records --params and refuses fits with others")
    parser.add_argument("--quick", action="store_true", help="tiny subset for smoke tests")
    parser.add_argument("--jobs", type=int, default=1, help="jobs run at once")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per job")
    parser.add_argument("--csv", type=Path, default=ROOT / "benchmarks" / "results" / "tables.csv")
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    parser.add_argument("--compare", type=Path, help="earlier results CSV: its rows for models not run now "
                        "(same datasets and seeds) join the summary, so a variant is ranked against peers "
                        "without rerunning them")
    return parser


def _check(parser, args, params):
    if args.members < 1 or args.seed_offset < 0:
        parser.error("--members must be at least 1 and --seed-offset at least 0")
    if (args.members, args.seed_offset, args.half) != (1, 0, None) and (
            not args.no_docs or args.csv.resolve() == parser.get_default("csv").resolve()):
        # Their rows are labelled anomvae like the defaults' rows: keep them
        # out of the table and the CSV that report the defaults.
        parser.error("--members, --seed-offset and --half need --no-docs and a --csv of their own")
    if args.compare and args.compare.resolve() == args.csv.resolve():
        parser.error("--compare names the file --csv would overwrite; give --csv another path")
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


def _job(task, params, args):
    import torch

    torch.set_num_threads(args.threads)
    return run_one(*task, params, args.quick, args.members, args.seed_offset, args.scores, args.combine)


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    params = json.loads(args.params)
    if args.quick:
        params = {"max_epochs": 3, **params}
    _check(parser, args, params)
    found = datasets(args.suite, args.data, args.datasets, args.half)
    if not found:
        parser.error("no datasets found")
    models = args.models or available_models()
    tasks = [(suite, path, half, s, m) for suite, path, half in found for s in range(args.seeds) for m in models]
    if args.jobs > 1:
        from joblib import Parallel, delayed

        rows = Parallel(n_jobs=args.jobs)(delayed(_job)(task, params, args) for task in tasks)
    else:
        rows = []
        for task in tasks:
            rows.append(_job(task, params, args))
            r = rows[-1]
            print(f"{r['dataset']:20s} seed {r['seed']} {r['model']:9s} ROC-AUC {r['roc_auc']:.3f} "
                  f"AP {r['ap']:.3f} fit {r['fit_s']:.1f}s", file=sys.stderr)
    results = pd.DataFrame(rows)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    results.to_csv(args.csv, index=False)
    if args.compare:
        earlier = pd.read_csv(args.compare)
        earlier = earlier[~earlier.model.isin(models) & earlier.dataset.isin(results.dataset)
                          & earlier.seed.isin(results.seed)]
        results = pd.concat([results, earlier], ignore_index=True)
    text = summarize(results) + "\n\nPer dataset:\n\n" + per_dataset(results)
    print(text)
    if not args.no_docs:
        write_docs(text, args, len(found))
    return results


if __name__ == "__main__":
    main()

"""Detection quality on data the ODDS suite does not contain.

A check that defaults chosen on ODDS hold elsewhere. Two sources, both
bundled with scikit-learn, so nothing is downloaded:

- ``digits``: the 8x8 digits as 64 tabular features (grey levels 0-16);
  one group of digits is normal, the other group supplies the anomalies.
- ``photo``: non-overlapping 8x8 grey patches (levels 0-255, 64 features)
  of the two bundled photographs; patches of one photo are normal, patches
  of the other are the anomalies.

Per case and seed: a random 70% of the normal rows train and the other 30%
test; anomalies make up ``--rate`` (5%) of the training part and of the test
part, drawn without overlap, so training is contaminated as on ODDS. Every
detector is fitted on the training part without labels and scores the test
part. anomvae runs as the tabular default (an MLP), and once more per
``--variant``; IsolationForest runs with its defaults in the same run.
Each anomvae line is compared with IsolationForest alone (cases ahead),
since several near-identical anomvae lines would crowd a joint ranking.

    python benchmarks/outside.py                                       # defaults against IsolationForest
    python benchmarks/outside.py --variant 'loss={"trim_by": "loss"}'  # and a variant, in the same run
    python benchmarks/outside.py --quick                               # smoke run, prints only
"""

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import load_digits, load_sample_image
from sklearn.ensemble import IsolationForest
from sklearn.metrics import average_precision_score, roc_auc_score

EVEN, ODD = [0, 2, 4, 6, 8], [1, 3, 5, 7, 9]
LOW, HIGH = [0, 1, 2, 3, 4], [5, 6, 7, 8, 9]
# case name -> (source, normal class, anomaly class)
CASES = {
    "digits 0-4 | 5-9": ("digits", LOW, HIGH),
    "digits 5-9 | 0-4": ("digits", HIGH, LOW),
    "digits even | odd": ("digits", EVEN, ODD),
    "digits odd | even": ("digits", ODD, EVEN),
    "photo china | flower": ("photo", "china.jpg", "flower.jpg"),
    "photo flower | china": ("photo", "flower.jpg", "china.jpg"),
}


def patches(name, size=8):
    """Non-overlapping ``size`` x ``size`` grey patches of a bundled photo, one row each."""
    rgb = load_sample_image(name).astype(np.float64)
    grey = np.rint(rgb @ [0.299, 0.587, 0.114])
    h, w = (s - s % size for s in grey.shape)
    blocks = grey[:h, :w].reshape(h // size, size, w // size, size).swapaxes(1, 2)
    return blocks.reshape(-1, size * size)


def rows_of(source, cls):
    if source == "photo":
        return patches(cls)
    digits = load_digits()
    return digits.data[np.isin(digits.target, cls)].astype(np.float64)


def split(normal, anomalies, rate, seed):
    """Training rows and test rows and labels (1 = anomaly); anomalies are
    ``rate`` of each part, and no row is in both parts."""
    rng = np.random.RandomState(seed)
    normal = normal[rng.permutation(len(normal))]
    n_train = int(round(0.7 * len(normal)))
    train, test = normal[:n_train], normal[n_train:]
    k_train, k_test = (int(round(rate / (1 - rate) * len(part))) for part in (train, test))
    if k_train + k_test > len(anomalies):
        raise ValueError(f"{k_train + k_test} anomalies wanted, {len(anomalies)} available")
    picked = anomalies[rng.choice(len(anomalies), k_train + k_test, replace=False)]
    X_train = np.vstack([train, picked[:k_train]])[rng.permutation(len(train) + k_train)]
    X_test = np.vstack([test, picked[k_train:]])
    y_test = np.r_[np.zeros(len(test)), np.ones(k_test)]
    return X_train, X_test, y_test


def run_one(case, seed, model, params, rate):
    source, normal_cls, anomaly_cls = CASES[case]
    X_train, X_test, y_test = split(rows_of(source, normal_cls), rows_of(source, anomaly_cls), rate, seed)
    if model == "iforest":
        detector = IsolationForest(random_state=seed)
    else:
        from anomvae import VAEAnomalyDetector

        detector = VAEAnomalyDetector(random_state=seed, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        detector.fit(X_train)
        fit_s = time.perf_counter() - start
    scores = -detector.score_samples(X_test)
    return {
        "case": case, "seed": seed, "model": model, "n_train": len(X_train),
        "roc_auc": roc_auc_score(y_test, scores), "ap": average_precision_score(y_test, scores),
        "fit_s": fit_s, "epochs": getattr(detector, "n_epochs_", np.nan),
    }


def summarize(results):
    """Per-case mean ROC-AUC per model (cases as rows), then mean ROC-AUC,
    mean AP, the cases where each anomvae line beats IsolationForest, and
    fit seconds per seed."""
    models = list(dict.fromkeys(results.model))
    per = results.groupby(["case", "model"])[["roc_auc", "ap"]].mean()
    auc = per["roc_auc"].unstack("model")[models]
    ap = per["ap"].unstack("model")[models]
    fit = results.groupby(["model", "seed"]).fit_s.sum().groupby("model").mean()
    lines = ["| case (normal \\| anomalies) | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
    for case, row in auc.iterrows():
        lines.append(f"| {case.replace('|', chr(92) + '|')} | "
                     + " | ".join(f"**{v:.3f}**" if v == row.max() else f"{v:.3f}" for v in row) + " |")
    lines.append("| **mean ROC-AUC** | " + " | ".join(f"{auc[m].mean():.3f}" for m in models) + " |")
    lines.append("| mean AP | " + " | ".join(f"{ap[m].mean():.3f}" for m in models) + " |")
    if "iforest" in auc:
        ahead = {m: f"{int((auc[m] > auc['iforest']).sum())} of {len(auc)}" for m in models if m != "iforest"}
        lines.append("| cases ahead of IsolationForest | " + " | ".join(ahead.get(m, "") for m in models) + " |")
    lines.append("| fit s (all cases, one seed) | " + " | ".join(f"{fit[m]:.1f}" for m in models) + " |")
    return "\n".join(lines)


def parse_variant(text):
    """``NAME=JSON`` -> (NAME, parameters), checked before anything is fitted."""
    name, sep, params = text.partition("=")
    if not sep or not name or name in ("anomvae", "iforest"):
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected NAME={{JSON object of VAEAnomalyDetector parameters}}, "
            "NAME not anomvae or iforest")
    try:
        params = json.loads(params)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: the part after '=' is not JSON ({exc})")
    if not isinstance(params, dict) or "random_state" in params:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the part after '=' must be a JSON object of VAEAnomalyDetector parameters, "
            "without random_state (the benchmark sets it per seed)")
    from anomvae import VAEAnomalyDetector

    try:
        VAEAnomalyDetector(**params).check_params()
    except (TypeError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}")
    return name, params


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="*", choices=list(CASES), metavar="CASE",
                        help="cases to run (default: all): " + "; ".join(CASES))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=0.05, help="share of anomalies in each part")
    parser.add_argument("--variant", action="append", type=parse_variant, default=[], metavar="NAME=JSON",
                        help="also run anomvae with these parameters, labelled NAME (repeatable)")
    parser.add_argument("--no-defaults", action="store_true", help="skip anomvae with its default parameters")
    parser.add_argument("--jobs", type=int, default=1, help="parallel jobs (timings are then not comparable)")
    parser.add_argument("--csv", type=Path, help="write the raw rows here")
    parser.add_argument("--quick", action="store_true", help="one digits case, one seed, 3 epochs; prints only")
    args = parser.parse_args(argv)
    if not 0 < args.rate < 0.5:
        parser.error(f"--rate must lie in (0, 0.5), got {args.rate}")
    if args.seeds < 1 or args.jobs < 1:
        parser.error(f"--seeds and --jobs must be at least 1, got {args.seeds} and {args.jobs}")
    names = [name for name, _ in args.variant]
    if len(set(names)) != len(names):
        parser.error(f"--variant names repeat: {names}")
    models = ([] if args.no_defaults else [("anomvae", {})]) + args.variant + [("iforest", None)]
    cases = args.cases or list(CASES)
    if args.quick:
        cases, args.seeds = cases[:1], 1
        models = [(name, {**params, "max_epochs": 3}) if params is not None else (name, None)
                  for name, params in models]

    tasks = [(case, seed, name, params) for case in cases for seed in range(args.seeds) for name, params in models]

    def job(case, seed, name, params):
        import torch

        if args.jobs > 1:
            torch.set_num_threads(1)
        row = run_one(case, seed, "iforest" if params is None else "anomvae", params or {}, args.rate)
        return {**row, "model": name}

    if args.jobs > 1:
        from joblib import Parallel, delayed

        rows = Parallel(n_jobs=args.jobs)(delayed(job)(*t) for t in tasks)
    else:
        rows = [job(*t) for t in tasks]
    results = pd.DataFrame(rows)
    if args.csv and not args.quick:
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        results.to_csv(args.csv, index=False)
    print(summarize(results))
    return results


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)

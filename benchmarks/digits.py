"""One-class benchmark on scikit-learn's bundled 8x8 digits.

For each digit d: train on 70% of the images of d, then score the held-out
30% of d against as many images of the other digits (drawn at random), and
report the ROC-AUC of the anomaly score. The convolutional VAE and
scikit-learn's IsolationForest see the same pixels (scaled to [0, 1]) in
the same run.

    python benchmarks/digits.py            # full run, writes docs/benchmarks-digits.md
    python benchmarks/digits.py --quick    # two digits, few epochs, prints only
"""

import argparse
import os
import platform
import sys
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.ensemble import IsolationForest
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import roc_auc_score

from anomvae import VAEAnomalyDetector

SEED = 0
DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks-digits.md"
BEGIN, END = "<!-- digits-table:begin -->", "<!-- digits-table:end -->"


def split(images, labels, digit, rng):
    """Training images of ``digit``; test images (held-out ``digit`` first,
    then as many other digits) and labels (1 = another digit, an anomaly)."""
    own = rng.permutation(np.flatnonzero(labels == digit))
    n_train = int(round(0.7 * len(own)))
    held_out = own[n_train:]
    others = rng.choice(np.flatnonzero(labels != digit), size=len(held_out), replace=False)
    test = np.r_[held_out, others]
    return images[own[:n_train]], images[test], np.r_[np.zeros(len(held_out)), np.ones(len(others))]


def vae(args):
    seed = getattr(args, "seed", SEED)
    # What `anomvae fit` does for images: the conv network and the Bernoulli
    # likelihood; every other parameter at the estimator's default.
    extra = {"max_epochs": args.max_epochs} if args.max_epochs else {}
    return VAEAnomalyDetector(
        architecture="conv", image_shape=(1, 8, 8), likelihood=args.likelihood, random_state=seed, **extra
    )


def run(args):
    digits = load_digits()
    images = (digits.data / 16.0).astype(np.float32)
    seed = getattr(args, "seed", SEED)
    rng = np.random.RandomState(seed)
    rows = []
    for digit in args.digits:
        X_train, X_test, y_test = split(images, digits.target, digit, rng)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            detector = vae(args).fit(X_train)
        forest = IsolationForest(random_state=seed).fit(X_train)
        rows.append((
            digit, len(X_train), len(X_test),
            roc_auc_score(y_test, -detector.score_samples(X_test)),
            roc_auc_score(y_test, -forest.score_samples(X_test)),
        ))
    return rows


def table(rows):
    lines = ["| digit | train | test | conv VAE ROC-AUC | IsolationForest ROC-AUC |", "|---|---|---|---|---|"]
    lines += [f"| {d} | {n} | {m} | {a:.3f} | {b:.3f} |" for d, n, m, a, b in rows]
    lines.append(f"| **mean** | | | **{np.mean([r[3] for r in rows]):.3f}** | "
                 f"**{np.mean([r[4] for r in rows]):.3f}** |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Digits 0 and 1, 5 epochs; print only.")
    parser.add_argument("--likelihood", default="bernoulli", choices=["bernoulli", "continuous_bernoulli", "gaussian"])
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=SEED, help="Seed of the splits and both detectors.")
    parser.add_argument("--write", action="store_true", help=f"Write the table to {DOCS.name}.")
    args = parser.parse_args(argv)
    args.digits = [0, 1] if args.quick else list(range(10))
    if args.quick:
        args.max_epochs = args.max_epochs or 5
    start = time.perf_counter()
    rows = run(args)
    text = table(rows)
    print(text)
    if args.write and not args.quick:
        command = ".venv/bin/python benchmarks/digits.py " + " ".join(a for a in (argv or sys.argv[1:]))
        generated = (
            "Each digit of scikit-learn's 8x8 `load_digits` in turn is the normal class: "
            f"the detectors train on a random 70% of its images (seed {args.seed}) and score the held-out "
            "30% together with as many images of other digits. ROC-AUC of the anomaly score; "
            "both detectors see the same pixels, scaled to [0, 1], in the same run. The conv VAE "
            f"uses the image defaults of `anomvae fit` (likelihood `{args.likelihood}`, every other "
            f"parameter at its default{f', max_epochs={args.max_epochs}' if args.max_epochs else ''}); "
            "IsolationForest its scikit-learn defaults.\n\n"
            f"{text}\n\n"
            f"Reproduce: `{command.strip()}` ({time.perf_counter() - start:.0f} s on {os.cpu_count()} CPU cores, "
            f"{torch.get_num_threads()} PyTorch threads). "
            f"Measured {datetime.now(timezone.utc):%Y-%m-%d} on {platform.machine()} "
            f"({platform.processor() or platform.platform()}), CPU, Python {platform.python_version()}.\n"
        )
        # Only the text between the markers is rewritten; notes around it stay.
        page = DOCS.read_text() if DOCS.exists() else f"# Benchmark: one digit against the others\n\n{BEGIN}\n{END}\n"
        head, rest = page.split(BEGIN, 1)
        DOCS.write_text(head + BEGIN + "\n" + generated + END + rest.split(END, 1)[1])
    return rows


if __name__ == "__main__":
    main()

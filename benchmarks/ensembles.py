"""Averaging anomvae's scores over fits with different seeds (ODDS).

Reads the test scores that ``benchmarks/tables.py --scores DIR`` saved for
several seed offsets, and scores every split with the mean negative ELBO
of K fits, for every choice of K offsets among those saved. Each choice is
ranked against the peers' stored rows, as ``tables.py --compare`` does; the
report gives, per K, the mean over the choices and the worst and best one.

    for m in 0 1 2 3 4 5; do
        python benchmarks/tables.py --models anomvae --seed-offset $m --jobs 2 --no-docs \\
            --scores /tmp/scores --csv /tmp/seed$m.csv
    done
    python benchmarks/ensembles.py /tmp/scores --members 1 2 3 4
"""

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tables  # noqa: E402


def load_scores(folder):
    """``{(dataset, seed, offset): (scores, y)}`` from ``tables.py --scores``."""
    saved = {}
    for path in sorted(Path(folder).glob("*.npz")):
        dataset, seed, offset = path.stem.rsplit("-", 2)
        with np.load(path) as data:
            saved[dataset, int(seed), int(offset)] = (data["scores"], data["y"])
    if not saved:
        raise ValueError(f"no saved scores in {folder}")
    return saved


def complete_offsets(saved):
    """The offsets saved for every dataset and seed that any offset has."""
    splits = {(d, s) for d, s, _ in saved}
    offsets = {o for _, _, o in saved}
    return sorted(o for o in offsets if all((d, s, o) in saved for d, s in splits))


def ensemble_metrics(saved, offsets):
    """Per-dataset mean ROC-AUC and AP of the mean score of ``offsets``' fits."""
    rows = []
    for dataset, seed in sorted({(d, s) for d, s, _ in saved}):
        y = saved[dataset, seed, offsets[0]][1]
        for o in offsets[1:]:
            if not np.array_equal(saved[dataset, seed, o][1], y):
                raise ValueError(f"{dataset} seed {seed}: offsets {offsets[0]} and {o} hold different test parts")
        scores = np.mean([saved[dataset, seed, o][0] for o in offsets], axis=0)
        rows.append((dataset, roc_auc_score(y, scores), average_precision_score(y, scores)))
    return pd.DataFrame(rows, columns=["dataset", "roc_auc", "ap"]).groupby("dataset").mean()


def evaluate(saved, peer_auc, members):
    """One row per choice of offsets: K, the offsets, mean ROC-AUC and AP,
    anomvae's and IsolationForest's mean ranks."""
    offsets = complete_offsets(saved)
    rows = []
    for k in members:
        if k > len(offsets):
            raise ValueError(f"{k} members need {k} seed offsets; {len(offsets)} are complete: {offsets}")
        for choice in itertools.combinations(offsets, k):
            per = ensemble_metrics(saved, list(choice))
            mean_auc, rank, iforest = tables.rank_against(peer_auc, per["roc_auc"])
            rows.append({
                "members": k, "offsets": " ".join(map(str, choice)), "mean_roc_auc": mean_auc,
                "mean_ap": per["ap"].mean(), "mean_rank": rank, "iforest_rank": iforest,
            })
    return pd.DataFrame(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scores", type=Path, help="folder written by benchmarks/tables.py --scores")
    parser.add_argument("--members", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--compare", type=Path, default=tables.ROOT / "benchmarks" / "results" / "tables.csv",
                        help="results CSV of benchmarks/tables.py whose peers' rows rank the ensembles")
    parser.add_argument("--csv", type=Path, help="also write one row per choice of offsets here")
    args = parser.parse_args(argv)
    if min(args.members) < 1:
        parser.error("--members must be at least 1")
    try:
        saved = load_scores(args.scores)
    except ValueError as error:
        parser.error(str(error))
    peer_auc = tables.peer_roc_auc(args.compare)
    missing = sorted({d for d, _, _ in saved} - set(peer_auc.index))
    if missing:
        parser.error(f"{args.compare} has no peers' rows for {', '.join(missing)}")
    try:
        rows = evaluate(saved, peer_auc, args.members)
    except ValueError as error:
        parser.error(str(error))
    if args.csv:
        rows.to_csv(args.csv, index=False)
    summary = rows.groupby("members").agg(
        choices=("offsets", "size"), mean_roc_auc=("mean_roc_auc", "mean"), mean_ap=("mean_ap", "mean"),
        mean_rank=("mean_rank", "mean"), best_rank=("mean_rank", "min"), worst_rank=("mean_rank", "max"),
        iforest_rank=("iforest_rank", "mean"),
        beats_iforest=("mean_rank", lambda r: (r < rows.loc[r.index, "iforest_rank"]).mean()),
    )
    print(f"seed offsets: {complete_offsets(saved)}")
    print(summary.round(3).to_string())
    return rows, summary


if __name__ == "__main__":
    main()

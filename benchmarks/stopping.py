"""Early-stopping rules replayed on whole training trajectories (ODDS).

Each fit runs with early stopping off for ``--epochs`` epochs and records,
after every epoch, the validation loss that early stopping watches and the
ROC-AUC of the test part (same splits as ``benchmarks/tables.py``). Training
does not depend on the stopping rule, so a rule's outcome can be replayed
exactly from these records: the epoch it would stop at, and the weights it
would keep (those of the lowest validation loss up to then).

The report compares a grid of ``n_iter_no_change`` (patience) and ``tol``
values with the defaults, ranked against the peers' stored rows, plus two
references that look at the test labels and so are not rules a user could
apply: the best epoch of each split, and the best single epoch count.

    python benchmarks/stopping.py --seed-offsets 0 1 --jobs 2   # about 6 minutes per offset on 2 cores
    python benchmarks/stopping.py --seed-offsets 0 1 --replay   # report again from the stored trajectories
    python benchmarks/stopping.py --quick                       # smoke run on a tiny subset

Output: the per-epoch records (``--trajectories``; several MB for the
whole suite and a few offsets) and the summary rows (``--csv``) go to
``anomvae-stopping/`` in the system's temporary folder unless paths are
given, so a run never writes into the repository. ``--replay`` reads the
records from the same default path, so it reports on the last run made
with the defaults on this machine.
"""

import argparse
import itertools
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tables  # noqa: E402

RESULTS = tables.ROOT / "benchmarks" / "results"
OUTPUT = Path(tempfile.gettempdir()) / "anomvae-stopping"
PATIENCES = (5, 10, 20, 30)
TOLS = (1e-4, 1e-3, 3e-3, 1e-2)


def replay(val_loss, patience, tol, warmup):
    """The epochs a stopping rule keeps and stops at, from a trajectory.

    Mirrors :class:`anomvae.training.EarlyStopping`: epochs before ``warmup`` are not
    monitored; an epoch is stale unless its loss beats the best so far by
    more than ``tol * |best|``; training stops after ``patience`` stale
    epochs in a row, keeping the weights of the lowest loss seen.

    Returns
    -------
    best_epoch, stop_epoch : int
        1-based, as ``best_epoch_`` and ``n_epochs_``.
    stopped : bool
        False when the trajectory ended first; its length is then the
        stop epoch.
    """
    start = max(warmup, 1)
    best, best_epoch, stale = np.inf, len(val_loss), 0
    for epoch in range(start, len(val_loss) + 1):
        loss = val_loss[epoch - 1]
        stale = 0 if epoch == start or loss < best - tol * abs(best) else stale + 1
        if epoch == start or loss < best:
            best, best_epoch = loss, epoch
        if stale >= patience:
            return best_epoch, epoch, True
    return best_epoch, len(val_loss), False


def trajectory(path, seed, seed_offset, epochs, params, quick):
    """One fit's per-epoch validation loss and test ROC-AUC, as rows."""
    import torch

    from anomvae import VAEAnomalyDetector
    from anomvae.preprocessing import Standardizer
    from anomvae.training import TrainingOptions, fit_network

    torch.set_num_threads(1)
    X_train, X_test, _, y_test = tables.load_split(path, seed, quick)
    # The fit VAEAnomalyDetector(**params) makes, watched after every epoch.
    detector = VAEAnomalyDetector(random_state=seed + 100 * seed_offset, max_epochs=epochs, n_iter_no_change=None,
                                  **params)
    options = TrainingOptions.from_params(detector.get_params())
    scaled_test = Standardizer.fit(X_train, standardize=True, likelihood="gaussian").transform(X_test)
    test_auc = []

    def watch(record, module):
        # Scoring draws no random numbers, so the trajectory is the one an
        # ordinary fit with the same random_state follows. The scaling's
        # log-Jacobian is the same for every row and leaves ranks alone.
        reconstruction, kl = module.map_chunks(module.score_terms, scaled_test)
        test_auc.append(roc_auc_score(y_test, reconstruction + kl))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = fit_network(X_train, options, np.random.RandomState(detector.random_state), "cpu", on_epoch=watch)
    history = net.training.history
    return pd.DataFrame({
        "dataset": path.stem, "seed": seed, "seed_offset": seed_offset,
        "epoch": history.epoch, "val_loss": history.val_loss, "roc_auc": test_auc,
    })


def evaluate(trajectories, peer_auc, warmup):
    """Summary rows: each rule and reference, per seed offset."""
    rows = []
    for offset, runs in trajectories.groupby("seed_offset"):
        fits = {key: fit.sort_values("epoch") for key, fit in runs.groupby(["dataset", "seed"])}

        def summary(label, choose, fixed_epoch=None):
            chosen = {key: choose(fit) for key, fit in fits.items()}
            auc = pd.Series({key: fit["roc_auc"].iloc[chosen[key][0] - 1] for key, fit in fits.items()})
            auc = auc.groupby(level=0).mean()
            mean_auc, rank, iforest = tables.rank_against(peer_auc, auc)
            rows.append({
                "rule": label, "seed_offset": offset, "mean_roc_auc": mean_auc, "mean_rank": rank,
                "iforest_rank": iforest, "epochs": sum(c[1] for c in chosen.values()),
                "unstopped": sum(not c[2] for c in chosen.values()), "fixed_epoch": fixed_epoch,
            })

        for patience, tol in itertools.product(PATIENCES, TOLS):
            summary(f"n_iter_no_change={patience}, tol={tol:g}",
                    lambda fit: replay(fit["val_loss"].to_numpy(), patience, tol, warmup))
        n = min(len(fit) for fit in fits.values())
        best_fixed = max(range(max(warmup, 1), n + 1),
                         key=lambda e: np.mean([fit["roc_auc"].iloc[e - 1] for fit in fits.values()]))
        summary("reference: best fixed epoch count", lambda fit: (best_fixed, best_fixed, True), best_fixed)
        summary("reference: best epoch of each split",
                lambda fit: (max(warmup, 1) + int(np.argmax(fit["roc_auc"].to_numpy()[max(warmup, 1) - 1:])),
                             len(fit), True))
    return pd.DataFrame(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=tables.DEFAULT_DATA,
                        help="folder of .npz files (default: the ODDS suite)")
    parser.add_argument("--datasets", nargs="*", help="dataset names (default: all)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--seed-offsets", type=int, nargs="+", default=[0],
                        help="anomvae's random_state is the split seed + 100 x each of these")
    parser.add_argument("--epochs", type=int, default=300, help="epochs per fit, early stopping off")
    parser.add_argument("--params", default="{}", help="JSON of VAEAnomalyDetector parameters")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="tiny subset for smoke tests")
    parser.add_argument("--compare", type=Path, default=RESULTS / "tables.csv",
                        help="results CSV of benchmarks/tables.py whose peers' rows rank the rules")
    parser.add_argument("--trajectories", type=Path, default=OUTPUT / "trajectories.csv",
                        help="CSV the per-epoch records are written to (default: %(default)s)")
    parser.add_argument("--csv", type=Path, default=OUTPUT / "summary.csv",
                        help="CSV of the summary rows (default: %(default)s)")
    parser.add_argument("--replay", action="store_true",
                        help="fit nothing: read the --trajectories CSV of an earlier run and report again")
    args = parser.parse_args(argv)

    paths = sorted(args.data.glob("*.npz"))
    if args.datasets:
        paths = [p for p in paths if p.stem in args.datasets]
    if not paths:
        parser.error(f"no datasets found in {args.data}")
    params = json.loads(args.params)
    if {"max_epochs", "n_iter_no_change"} & set(params):
        parser.error("--params may not set max_epochs or n_iter_no_change: --epochs sets the trajectory")
    if params.get("validation_fraction", 0.1) <= 0:
        parser.error("--params needs a validation_fraction above 0: the records hold the validation loss")
    if args.quick:
        args.epochs = min(args.epochs, 15)
    peer_auc = tables.peer_roc_auc(args.compare)
    missing = sorted({p.stem for p in paths} - set(peer_auc.index))
    if missing:
        parser.error(f"{args.compare} has no peers' rows for {', '.join(missing)}")

    if args.replay:
        if not args.trajectories.exists():
            parser.error(f"{args.trajectories} does not exist: run without --replay first, or give --trajectories")
        trajectories = pd.read_csv(args.trajectories)
        trajectories = trajectories[trajectories.dataset.isin([p.stem for p in paths])
                                    & trajectories.seed.lt(args.seeds)
                                    & trajectories.seed_offset.isin(args.seed_offsets)]
        if trajectories.empty:
            parser.error(f"{args.trajectories} holds none of the datasets, seeds and offsets asked for")
    else:
        # Largest datasets first, so that parallel jobs finish together.
        paths.sort(key=lambda p: -np.load(p)["X"].size)
        tasks = [(p, s, o) for o in args.seed_offsets for p in paths for s in range(args.seeds)]
        if args.jobs > 1:
            from joblib import Parallel, delayed

            parts = Parallel(n_jobs=args.jobs)(
                delayed(trajectory)(*t, args.epochs, params, args.quick) for t in tasks)
        else:
            parts = [trajectory(*t, args.epochs, params, args.quick) for t in tasks]
        trajectories = pd.concat(parts, ignore_index=True)
        args.trajectories.parent.mkdir(parents=True, exist_ok=True)
        trajectories.to_csv(args.trajectories, index=False)

    from anomvae import VAEAnomalyDetector

    warmup = params.get("kl_warmup", VAEAnomalyDetector().kl_warmup)
    summary = evaluate(trajectories, peer_auc, warmup)
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    summary.to_csv(args.csv, index=False)
    print(f"records: {args.trajectories}\nsummary: {args.csv}")
    defaults = VAEAnomalyDetector()
    print(f"defaults: n_iter_no_change={defaults.n_iter_no_change}, tol={defaults.tol:g}")
    shown = summary.pivot_table(index="rule", columns="seed_offset", sort=False,
                                values=["mean_roc_auc", "mean_rank", "iforest_rank", "epochs"])
    with pd.option_context("display.width", 200, "display.max_rows", 100):
        print(shown.round(4))
    return trajectories, summary


if __name__ == "__main__":
    main()

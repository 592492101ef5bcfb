"""Speed and memory of anomvae, measured beside peers in the same run.

1. Training time per epoch and scoring throughput against PyOD's VAE on the
   same synthetic data, same architecture, same epochs (needs pyod:
   ``pip install -e '.[bench]'``).
2. In-memory scoring throughput against a simple bound: the network's
   floating-point operations per row divided by the machine's measured
   float32 matrix-multiply rate.
3. ``anomvae score`` on a generated CSV against ``pandas.read_csv`` of the
   same file, each as a fresh process: wall time and peak resident memory.
   Beside them, a floor: a process that reads the file with pandas and
   writes placeholder results with the formatter ``anomvae score`` uses,
   without any model; and parts of the work timed alone, in wall and CPU
   seconds: importing torch in a fresh process, and the network on the
   file's rows in memory. ``anomvae score`` runs with its default of one
   torch thread and with ``--threads 2``. Then the same rows scored from
   Parquet against CSV, and rows/s of ``anomvae.dask.score`` on a 2-worker
   ``LocalCluster`` against one process (``--dask-rows``, 10M by default).

    python benchmarks/speed.py            # full run (100k x 32; 1M-row CSV), updates docs/benchmarks.md
    python benchmarks/speed.py --cli-only # part 3 alone, with issue 20's targets (4x read_csv, 400 MB)
    python benchmarks/speed.py --quick    # smoke run on tiny sizes, no docs

Each timing is the median of ``--repeats`` runs.
"""

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MARKS = ("<!-- speed-table:begin -->", "<!-- speed-table:end -->")
CLI_MARKS = ("<!-- speed-cli:begin -->", "<!-- speed-cli:end -->")
ARCH = {"hidden": (128, 64, 32), "latent": 2, "batch_size": 32}  # PyOD VAE's defaults


def synthetic(n_rows, n_features, seed=0):
    rng = np.random.RandomState(seed)
    basis = rng.normal(size=(4, n_features))
    return (rng.normal(size=(n_rows, 4)) @ basis + 0.3 * rng.normal(size=(n_rows, n_features))).astype(np.float64)


def median_time(function, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def anomvae_detector(epochs, **extra):
    from anomvae import VAEAnomalyDetector

    return VAEAnomalyDetector(
        hidden_dims=ARCH["hidden"], latent_dim=ARCH["latent"], batch_size=ARCH["batch_size"],
        max_epochs=epochs, n_iter_no_change=None, validation_fraction=0.0, kl_warmup=0, random_state=0, **extra,
    )


def pyod_detector(epochs):
    from pyod.models.vae import VAE

    return VAE(
        encoder_neuron_list=list(ARCH["hidden"]), decoder_neuron_list=list(ARCH["hidden"][::-1]),
        latent_dim=ARCH["latent"], batch_size=ARCH["batch_size"], epoch_num=epochs, verbose=0,
        device="cpu", random_state=0,
    )


def against_pyod(X, epochs, repeats):
    """Seconds per training epoch and scoring rows/s, anomvae and PyOD's VAE."""
    rows = {}
    try:
        import pyod  # noqa: F401
    except ImportError:
        print("pyod is not installed: skipping the PyOD comparison", file=sys.stderr)
        makers = {"anomvae": anomvae_detector}
    else:
        makers = {"anomvae": anomvae_detector, "pyod_vae": pyod_detector}
    for name, make in makers.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_s = median_time(lambda: make(epochs).fit(X), repeats)
            detector = make(epochs).fit(X)
            score = detector.score_samples if name == "anomvae" else detector.decision_function
            score_s = median_time(lambda: score(X), repeats)
        rows[name] = {"epoch_s": fit_s / epochs, "rows_per_s": len(X) / score_s}
    return rows


def matmul_gflops(repeats, size=1024):
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    seconds = median_time(lambda: torch.mm(a, b), max(repeats, 5))
    return 2 * size**3 / seconds / 1e9


def network_flops_per_row(detector):
    """Multiply-adds x 2 of one row's scoring pass: the encoder once, the
    decoder once per fixed latent draw."""
    import torch

    def linear_flops(module):
        return sum(2 * m.in_features * m.out_features for m in module.modules() if isinstance(m, torch.nn.Linear))

    module = detector.module_
    return linear_flops(module.encoder) + module.score_noise.shape[0] * linear_flops(module.decoder)


def peak_run(command):
    """Wall seconds, peak RSS (MB) and CPU seconds (user and system, all
    threads) of ``command`` run as a child process."""
    probe = (
        "import resource, subprocess, sys, time\n"
        "t = time.perf_counter(); r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL)\n"
        "w = time.perf_counter() - t\n"
        "u = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "print(r.returncode, w, u.ru_maxrss / 1024, u.ru_utime + u.ru_stime)\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, *command], capture_output=True, text=True, check=True)
    code, wall, rss, cpu = out.stdout.split()
    if int(code) != 0:
        raise RuntimeError(f"{command} exited {code}")
    return float(wall), float(rss), float(cpu)


def _csv_file(n_rows, n_features, workdir):
    import pandas as pd

    columns = [f"x{i}" for i in range(n_features)]
    data = Path(workdir) / "big.csv"
    pd.DataFrame(synthetic(n_rows, n_features, seed=1).round(5), columns=columns).to_csv(data, index=False)
    train = Path(workdir) / "train.csv"
    pd.DataFrame(synthetic(20_000, n_features, seed=2), columns=columns).to_csv(train, index=False)
    model = Path(workdir) / "model.anomvae"
    subprocess.run([ANOMVAE, "fit", str(train), "-o", str(model), "--max-epochs", "5", "--random-state", "0", "-q"],
                   check=True)
    return data, model


ANOMVAE = str(Path(sys.executable).with_name("anomvae"))
THREADS = 2  # the other setting `anomvae score` is timed with, beside its default of one thread


def interleaved(commands, repeats):
    """Median wall and CPU seconds, and the largest peak RSS, of each
    command run ``repeats`` times as a child process, the commands taking
    turns so that a change in the machine's load falls on all of them."""
    runs = {name: [] for name in commands}
    for _ in range(repeats):
        for name, command in commands.items():
            runs[name].append(peak_run(command))
    return {name: {"wall_s": statistics.median(r[0] for r in rs), "rss_mb": max(r[1] for r in rs),
                   "cpu_s": statistics.median(r[2] for r in rs)} for name, rs in runs.items()}


def cli_against_read_csv(n_rows, n_features, repeats, workdir, dask_rows):
    import pandas as pd

    data, model = _csv_file(n_rows, n_features, workdir)
    score = [ANOMVAE, "score", str(model), str(data), "-o", str(Path(workdir) / "out.csv"), "-q"]
    read = [sys.executable, "-c", f"import pandas; pandas.read_csv({str(data)!r})"]
    # What any command that reads the file with pandas and writes one result
    # row per input row must spend: the same output columns as `score`,
    # written by the same formatter, with placeholder scores and no model.
    floor = [sys.executable, "-c", (
        "import numpy as np, pandas as pd\n"
        "from anomvae.results import write_frame\n"
        f"n = len(pd.read_csv({str(data)!r}))\n"
        "s = np.random.default_rng(0).normal(20.0, 3.0, n)\n"
        "flags = np.where(s > 26.0, 'true', 'false')\n"
        "out = pd.DataFrame({'row': np.arange(1, n + 1), 'anomaly_score': s, 'is_anomaly': flags})\n"
        f"with open({str(Path(workdir) / 'floor.csv')!r}, 'w') as f: write_frame(out, f, 'csv', True)\n"
    )]
    # Two parts of `anomvae score` timed alone: starting Python and importing
    # torch (nothing read), and the network on the file's rows once they are
    # in memory (model loaded, nothing read or written).
    torch_import = [sys.executable, "-c", "import torch"]
    load = os.getloadavg()
    results = interleaved({
        "read_csv": read, "read and write only": floor, "anomvae score": score,
        f"anomvae score --threads {THREADS}": [*score, "--threads", str(THREADS)], "import torch": torch_import,
    }, repeats)
    import torch

    from anomvae.persistence import load_for_scoring

    X = pd.read_csv(data).to_numpy()
    detector = load_for_scoring(model)
    runs = []
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # as `anomvae score` computes by default
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        detector.score_samples(X)
        runs.append((time.perf_counter() - wall, time.process_time() - cpu))
    torch.set_num_threads(before)
    results["network in memory"] = {"wall_s": statistics.median(r[0] for r in runs),
                                    "cpu_s": statistics.median(r[1] for r in runs)}
    results["reading as score does"] = read_as_score_does(data, detector, repeats)
    results["cores"] = os.cpu_count()
    results["file_mb"] = data.stat().st_size / 1e6
    results["load"] = (load, os.getloadavg())
    results["parquet"] = parquet_against_csv(data, model, repeats, workdir)
    results["dask"] = dask_rows_per_s(model, dask_rows, partition_rows=min(500_000, dask_rows))
    return results


def read_as_score_does(data, detector, repeats):
    """Median wall and CPU seconds of reading ``data`` in this process the
    way ``anomvae score`` does: ``tables.iter_table`` in chunks of 10,000
    rows, each converted to numbers (``tables.to_numeric``); nothing scored
    or written. This is all that scoring Parquet instead could save."""
    from anomvae import tables
    from anomvae.scoring import feature_names

    features, runs = feature_names(detector), []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        for chunk in tables.iter_table(str(data), columns=features, chunk_size=10_000):
            tables.to_numeric(chunk, features, name="data")
        runs.append((time.perf_counter() - wall, time.process_time() - cpu))
    return {"wall_s": statistics.median(r[0] for r in runs), "cpu_s": statistics.median(r[1] for r in runs)}


def parquet_against_csv(data, model, repeats, workdir):
    """``anomvae score`` of the same rows as Parquet (written by pandas with
    pyarrow's defaults: one row group per million rows) and as CSV."""
    import pandas as pd

    parquet = Path(workdir) / "big.parquet"
    pd.read_csv(data).to_parquet(parquet)
    out = str(Path(workdir) / "out-parquet.csv")
    return interleaved({"csv": [ANOMVAE, "score", str(model), str(data), "-o", out, "-q"],
                        "parquet": [ANOMVAE, "score", str(model), str(parquet), "-o", out, "-q"]}, repeats)


def dask_rows_per_s(model, n_rows, partition_rows=500_000, n_features=20):
    """Rows per second of ``anomvae.dask.score`` on ``n_rows`` generated
    rows, on a 2-worker ``LocalCluster`` (one thread each) and in this one
    process (Dask's synchronous scheduler, one torch thread): the same graph,
    the same partitions. Each partition's rows are drawn inside its task
    (``dask.array.random``), so neither run reads a file or ships data from
    here; the result is reduced to a count of scored rows. None (with the
    reason printed) when the ``dask`` extra is not installed."""
    import importlib.util

    if importlib.util.find_spec("distributed") is None or importlib.util.find_spec("dask") is None:
        print("Dask rows/s not measured: the dask extra is not installed", file=sys.stderr)
        return None
    import dask
    import dask.array as da
    import dask.dataframe as dd
    import torch

    from anomvae.dask import client, score

    def scored():
        values = da.random.default_rng(0).normal(size=(n_rows, n_features), chunks=(partition_rows, n_features))
        ddf = dd.from_dask_array(values, columns=[f"x{i}" for i in range(n_features)])
        return score(str(model), ddf)["anomaly_score"].count()

    runs = {}
    with client(n_workers=2) as connected:
        start = time.perf_counter()
        counted = connected.compute(scored()).result()
        runs["cluster"] = time.perf_counter() - start
    if counted != n_rows:
        raise RuntimeError(f"the cluster scored {counted} of {n_rows} rows")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with dask.config.set(scheduler="synchronous"):
            start = time.perf_counter()
            counted = scored().compute()
            runs["one"] = time.perf_counter() - start
    finally:
        torch.set_num_threads(before)
    if counted != n_rows:
        raise RuntimeError(f"one process scored {counted} of {n_rows} rows")
    return {"rows": n_rows, "partitions": -(-n_rows // partition_rows),
            "dask_rows_per_s": n_rows / runs["cluster"], "one_rows_per_s": n_rows / runs["one"]}


def report(args, pyod_rows, bound):
    import torch

    lines = [
        f"Measured {date.today().isoformat()} on {platform.machine()} with {os.cpu_count()} CPU cores "
        f"(PyTorch's default {torch.get_num_threads()} threads) by `.venv/bin/python benchmarks/speed.py`; "
        f"medians of {args.repeats} runs.",
        "",
        f"**Against PyOD's VAE** ({args.rows:,} x {args.features} synthetic rows; both with encoder "
        f"{'-'.join(map(str, ARCH['hidden']))}, latent 2, batch 32, {args.epochs} epochs, on the CPU):",
        "",
        "| | anomvae | PyOD VAE | ratio |",
        "|---|---|---|---|",
    ]
    a, p = pyod_rows["anomvae"], pyod_rows.get("pyod_vae")
    if p:
        lines.append(f"| seconds per training epoch | {a['epoch_s']:.2f} | {p['epoch_s']:.2f} | "
                     f"{p['epoch_s'] / a['epoch_s']:.1f}x faster |")
        lines.append(f"| scoring rows/s | {a['rows_per_s']:,.0f} | {p['rows_per_s']:,.0f} | "
                     f"{a['rows_per_s'] / p['rows_per_s']:.1f}x faster |")
    else:
        lines.append(f"| seconds per training epoch | {a['epoch_s']:.2f} | (pyod missing) | |")
        lines.append(f"| scoring rows/s | {a['rows_per_s']:,.0f} | (pyod missing) | |")
    lines += [
        "",
        f"**Scoring against the machine's bound** (default detector, {args.features} features): "
        f"{bound['flops_per_row']:,} FLOPs per row; float32 matmul at {bound['gflops']:.0f} GFLOP/s "
        f"bounds scoring at {bound['bound_rows_per_s']:,.0f} rows/s; measured {bound['rows_per_s']:,.0f} rows/s "
        f"({100 * bound['rows_per_s'] / bound['bound_rows_per_s']:.0f}% of the bound).",
    ]
    return "\n".join(lines)


def cli_report(args, cli):
    """The command line's table, against issue 20's targets: at most 4x
    ``read_csv``'s time and under 400 MB of peak RSS."""
    score, read = cli["anomvae score"], cli["read_csv"]
    two = cli[f"anomvae score --threads {THREADS}"]
    ratio = score["wall_s"] / read["wall_s"]
    (before, after) = cli["load"]
    lines = [
        f"Measured {date.today().isoformat()} on {platform.machine()} with {cli['cores']} CPU cores by "
        f"`.venv/bin/python benchmarks/speed.py{' --cli-only' if args.cli_only else ''}`; medians of "
        f"{args.repeats} runs, the commands taking turns; load average {before[0]:.1f} before the runs and "
        f"{after[0]:.1f} after them (other jobs shared the machine). `anomvae score` computes with one torch "
        f"thread unless `--threads` says otherwise; `read_csv` is pandas' default C engine.",
        "",
        f"**The command line** on a {cli['file_mb']:.0f} MB CSV ({args.csv_rows:,} rows x 20 columns), "
        "each a fresh process:",
        "",
        "| | wall s | CPU s (all threads) | peak RSS MB |",
        "|---|---|---|---|",
        f"| `pandas.read_csv` of the file | {read['wall_s']:.2f} | {read['cpu_s']:.2f} | {read['rss_mb']:.0f} |",
        f"| read, then write placeholder results with `score`'s formatter (no model) | "
        f"{cli['read and write only']['wall_s']:.2f} | {cli['read and write only']['cpu_s']:.2f} | "
        f"{cli['read and write only']['rss_mb']:.0f} |",
        f"| `anomvae score` (read, score, write; 1 thread) | {score['wall_s']:.2f} | {score['cpu_s']:.2f} | "
        f"{score['rss_mb']:.0f} |",
        f"| `anomvae score --threads {THREADS}` | {two['wall_s']:.2f} | {two['cpu_s']:.2f} | {two['rss_mb']:.0f} |",
        f"| `python -c \"import torch\"` (nothing read) | {cli['import torch']['wall_s']:.2f} | "
        f"{cli['import torch']['cpu_s']:.2f} | |",
        f"| the network on the file's rows, in memory, 1 thread (no import, read or write) | "
        f"{cli['network in memory']['wall_s']:.2f} | {cli['network in memory']['cpu_s']:.2f} | |",
        f"| reading the file as `score` does, in memory (10,000-row chunks to numbers; no import, score or "
        f"write) | {cli['reading as score does']['wall_s']:.2f} | {cli['reading as score does']['cpu_s']:.2f} | |",
        "",
        f"- `anomvae score` / `read_csv`: **{ratio:.2f}x** (target at most 4x: "
        f"{'met' if ratio <= 4 else 'not met'}).",
        f"- Peak RSS of `anomvae score`: **{score['rss_mb']:.0f} MB** (target under 400 MB: "
        f"{'met' if score['rss_mb'] < 400 else 'not met'}).",
    ]
    parquet = cli["parquet"]
    csv_s, parquet_s = parquet["csv"]["wall_s"], parquet["parquet"]["wall_s"]
    # Scoring Parquet can save at most what `score` spends reading the CSV
    # (measured in memory, as `score` reads it): the best ratio any Parquet
    # reader could give, were reading Parquet free.
    csv_read = cli["reading as score does"]["wall_s"]
    best = csv_s / max(csv_s - csv_read, 1e-9)
    lines.append(
        f"- Parquet against CSV scoring: **{csv_s / parquet_s:.2f}x** faster ({parquet_s:.2f} s against "
        f"{csv_s:.2f} s; peak RSS {parquet['parquet']['rss_mb']:.0f} MB against {parquet['csv']['rss_mb']:.0f}); "
        f"target at least 1.5x. Even a Parquet read costing nothing saves at most the {csv_read:.2f} s that "
        f"`score` spends reading the CSV, a ratio of at most {best:.2f}x.")
    dask_run = cli.get("dask")
    lines.append("- Dask scoring: " + (
        "not measured, the `dask` extra is not installed." if dask_run is None else
        f"{dask_run['rows']:,} generated rows in {dask_run['partitions']} partition(s): "
        f"{dask_run['dask_rows_per_s']:,.0f} rows/s on a 2-worker `LocalCluster` (one thread each) against "
        f"{dask_run['one_rows_per_s']:,.0f} rows/s in one process with one thread, the same graph "
        f"({dask_run['dask_rows_per_s'] / dask_run['one_rows_per_s']:.2f}x); a cluster of processes "
        f"on {cli['cores']} cores can at best double one process."))
    return "\n".join(lines)


def _update_docs(marks, text):
    doc = ROOT / "docs" / "benchmarks.md"
    content = doc.read_text()
    begin, end = content.index(marks[0]) + len(marks[0]), content.index(marks[1])
    doc.write_text(content[:begin] + "\n" + text + "\n" + content[end:])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--csv-rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dask-rows", type=int, default=10_000_000, help="rows scored on Dask (once each way)")
    parser.add_argument("--cli-only", action="store_true", help="only the command line's part (3.)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test; no docs")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows, args.epochs, args.csv_rows, args.repeats, args.no_docs = 2_000, 1, 5_000, 1, True
        args.dask_rows = 20_000

    pyod_rows = bound = None
    if not args.cli_only:
        X = synthetic(args.rows, args.features)
        anomvae_detector(1).fit(X[:500])  # torch's first call pays one-off set-up costs
        pyod_rows = against_pyod(X, args.epochs, args.repeats)
        from anomvae import VAEAnomalyDetector

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            default = VAEAnomalyDetector(max_epochs=2, random_state=0).fit(X[:5_000])
        rows_per_s = len(X) / median_time(lambda: default.score_samples(X), args.repeats)
        flops = network_flops_per_row(default)
        gflops = matmul_gflops(args.repeats)
        bound = {"flops_per_row": flops, "gflops": gflops, "bound_rows_per_s": gflops * 1e9 / flops,
                 "rows_per_s": rows_per_s}
    with tempfile.TemporaryDirectory() as workdir:
        cli = cli_against_read_csv(args.csv_rows, 20, args.repeats, workdir, args.dask_rows)
        # Both outputs must hold every row, or the timings compare unequal work.
        for name in ("out.csv", "floor.csv"):
            with open(Path(workdir) / name) as written:
                lines = sum(1 for _ in written)
            if lines != args.csv_rows + 1:
                raise RuntimeError(f"{name} has {lines} lines, expected {args.csv_rows + 1}")
    texts = {CLI_MARKS: cli_report(args, cli)}
    if not args.cli_only:
        texts[MARKS] = report(args, pyod_rows, bound)
    for marks, text in texts.items():
        print(text)
        if not args.no_docs:
            _update_docs(marks, text)
    return pyod_rows, bound, cli


if __name__ == "__main__":
    main()

"""``anomvae score --dask``: score Parquet or CSV files on a Dask cluster
into a folder of Parquet files (the work is :func:`anomvae.dask.score_to_parquet`)."""

import contextlib
import logging
import time

import click

from .app import EXIT_ANOMALIES, InputError, model_kind
from .options import data_inputs, given_options, refuse_csv_options

# Options of ``score`` that --dask does not take: what they change is the
# single output stream, per-row work on this machine, or (threads) what each
# worker sets for itself: one torch thread.
REFUSED = ("fmt", "only_anomalies", "chunk_size", "heatmaps", "heatmap_scale", "explain_top", "threads")


def score_with_dask(ctx, model, data, output, *, scheduler, threshold, id_column, invalid_rows, delimiter, decimal,
                    summary_top, summary_json, metrics_file, fail_on_anomaly, quiet):
    """Score DATA with MODEL on the cluster at ``scheduler`` (or a new
    2-worker local one) into the new folder ``output``; the summary line,
    ``--summary-json``, ``--metrics-file`` and exit codes are those of
    ``score``. The summary and the metrics are written before the Parquet
    files are moved into ``output``, and renamed into place after them."""
    given = given_options(ctx, REFUSED)
    if given:
        raise click.UsageError(f"{', '.join(given)} cannot be used with --dask")
    if output == "-":
        raise click.UsageError("--dask writes a folder of Parquet files: give it with -o FOLDER")
    started = time.monotonic()
    from .. import dask as anomdask
    from ..files import atomic_write, check_outputs
    from ..parquet import is_parquet_source
    from ..persistence import read_metadata
    from ..schema import id_columns_of
    from .score import _report, write_run_files

    if is_parquet_source(data):
        refuse_csv_options(ctx, ("delimiter", "decimal"), data, "Parquet")

    try:
        anomdask.require()
    except ImportError as exc:
        raise InputError(f"--dask needs the dask extra: {exc}") from None
    metadata = read_metadata(model)
    if model_kind(metadata) == "images":
        raise click.UsageError(f"{model} is an image model; --dask scores tables (Parquet or CSV)")
    ids = id_columns_of(metadata, id_column)
    # -o among them: a summary named as the folder would be renamed onto it
    # after the Parquet files had moved in, failing with the folder left.
    check_outputs({"-o": output, "--summary-json": summary_json, "--metrics-file": metrics_file},
                  {"MODEL": model, **_local_files(data)})
    ddf = anomdask.read(data, delimiter=delimiter, decimal=decimal)
    with contextlib.ExitStack() as outputs:
        # Opened first, so that an unwritable one fails before the cluster starts.
        metrics_stream = outputs.enter_context(atomic_write(metrics_file, "wb")) if metrics_file else None
        summary_stream = outputs.enter_context(atomic_write(summary_json)) if summary_json else None

        def write(summary):
            write_run_files(summary, model, data, started, summary=(summary_json, summary_stream),
                            metrics=(metrics_file, metrics_stream))

        # A failed task is this command's one-line error: the local
        # workers' own report of it (a traceback) is not shown as well.
        with anomdask.client(scheduler, silence_logs=logging.CRITICAL):
            summary = anomdask.score_to_parquet(
                model, ddf, output, threshold=threshold, id_columns=ids, invalid_rows=invalid_rows,
                summary_top=summary_top, shift_test=bool(summary_json or metrics_file) or not quiet,
                before_commit=write)
    if not quiet:
        _report(summary, data, "rows")
    if fail_on_anomaly and summary.anomalies:
        ctx.exit(EXIT_ANOMALIES)


def _local_files(data):
    """DATA's files on this machine, as ``check_outputs`` takes inputs: those
    of ``score`` and the CSV files of a pattern (none for a URL, which no
    output here can name)."""
    import glob

    if "://" in str(data):
        return {}
    inputs = data_inputs(data, False)
    inputs.setdefault("a file of DATA", glob.glob(str(data), recursive=True))
    return inputs

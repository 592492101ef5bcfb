"""``anomvae score --dask``: score Parquet or CSV files on a Dask cluster
into a folder of Parquet files (the work is :func:`anomvae.dask.score_to_parquet`)."""

import click

from .app import EXIT_ANOMALIES, InputError, model_kind

# Options of ``score`` that --dask does not take: what they change is the
# single output stream, or per-row work on this machine.
REFUSED = {"fmt": "--format", "only_anomalies": "--only-anomalies", "chunk_size": "--chunk-size",
           "heatmaps": "--heatmaps", "heatmap_scale": "--heatmap-scale", "explain_top": "--explain",
           "summary_json": "--summary-json", "metrics_file": "--metrics-file"}


def score_with_dask(ctx, model, data, output, *, scheduler, threshold, id_column, invalid_rows, delimiter, decimal,
                    summary_top, fail_on_anomaly, quiet):
    """Score DATA with MODEL on the cluster at ``scheduler`` (or a new
    2-worker local one) into the new folder ``output``; the summary line
    and exit codes are those of ``score``."""
    given = [flag for name, flag in REFUSED.items()
             if ctx.get_parameter_source(name) != click.core.ParameterSource.DEFAULT]
    if given:
        raise click.UsageError(f"{', '.join(given)} cannot be used with --dask")
    if output == "-":
        raise click.UsageError("--dask writes a folder of Parquet files: give it with -o FOLDER")
    from .. import dask as anomdask
    from ..persistence import read_metadata
    from .score import _report

    try:
        anomdask.require()
    except ImportError as exc:
        raise InputError(f"--dask needs the dask extra: {exc}") from None
    metadata = read_metadata(model)
    if model_kind(metadata) == "images":
        raise click.UsageError(f"{model} is an image model; --dask scores tables (Parquet or CSV)")
    ids = list(id_column) or list(metadata.get("extra", {}).get("id_columns", []))
    ddf = anomdask.read(data, delimiter=delimiter, decimal=decimal)
    with anomdask.client(scheduler):
        summary = anomdask.score_to_parquet(model, ddf, output, threshold=threshold, id_columns=ids,
                                            invalid_rows=invalid_rows, summary_top=summary_top)
    if not quiet:
        _report(summary, data, "rows")
    if fail_on_anomaly and summary.anomalies:
        ctx.exit(EXIT_ANOMALIES)

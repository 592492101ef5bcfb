"""``anomvae score`` and ``anomvae calibrate``: score rows or images with a
model, and set a model's threshold from normal reference rows."""

import contextlib
import json
import os
import time

import click

from .app import EXIT_ANOMALIES, InputError, input_errors, main, model_kind
from .options import (
    DATA,
    FiniteFloat,
    check_dialect,
    csv_dialect_options,
    data_inputs,
    refuse_csv_options,
    threads_option,
)


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("data", type=DATA)
@click.option("-o", "--output", default="-", type=click.Path(dir_okay=False, allow_dash=True),
              show_default=True, help="Where to write the results.")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl", "parquet"]), default=None,
              help="Output format [default: jsonl for a .jsonl output, parquet for a .parquet or .pq "
              "output, else csv]. Parquet needs -o FILE.")
@click.option("--only-anomalies", is_flag=True, help="Write only flagged rows (and rows not scored).")
@click.option("--threshold", type=FiniteFloat(), help="Anomaly-score cut in nats, instead of the model's.")
@click.option("--fail-on-anomaly", is_flag=True, help="Exit with code 1 when any row is flagged.")
@click.option("--id-column", multiple=True, help="Row identifier column(s) to copy to the output "
              "[default: those given at fit; else a 'row' number].")
@click.option("--chunk-size", type=click.IntRange(min=1), default=None, show_default="10000 rows, 256 images",
              help="Rows or images read and scored at a time; bounds memory.")
@csv_dialect_options
@click.option("--invalid-rows", type=click.Choice(["error", "mark"]), default="error", show_default=True,
              help="Rows with empty, NaN or infinite values: fail naming them, or write them "
              "unscored with a 'status' column saying why.")
@click.option("--heatmaps", type=click.Path(file_okay=False), help="Image models: write per image written "
              "a PNG of where its anomaly score comes from, with its score and flag, into this folder.")
@click.option("--heatmap-scale", type=click.Choice(["model", "image"]), default="model", show_default=True,
              help="Colour scale of --heatmaps: one for the model (from its calibration or training scores, "
              "so that images compare), or each image's own.")
@click.option("--explain", "explain_top", type=click.IntRange(min=0), default=0, metavar="K",
              help="Add an 'explanation' of each flagged row: its K features that add most to "
              "the anomaly score, with observed and reconstructed values.")
@click.option("--summary-json", type=click.Path(dir_okay=False, allow_dash=True),
              help="Also write a JSON summary (counts, threshold, top anomalies, score shift) here.")
@click.option("--summary-top", type=click.IntRange(min=0), default=10, show_default=True,
              help="How many of the highest-scoring rows --summary-json lists.")
@click.option("--metrics-file", type=click.Path(dir_okay=False, allow_dash=True),
              help="Also write the run's Prometheus metrics (counts, threshold, max score, shift test, "
              "duration, last success time) here, for node_exporter's textfile collector (a .prom file).")
@click.option("--dask", "use_dask", is_flag=True, help="Score on a Dask cluster: DATA is Parquet (a file, folder "
              "or glob) or CSV file(s), -o a new folder of Parquet files. Needs pip install 'anomvae[dask]'.")
@click.option("--scheduler", metavar="ADDRESS", help="With --dask: the scheduler to use (tcp://host:8786) "
              "[default: a local cluster of 2 worker processes].")
@threads_option
@click.option("-q", "--quiet", is_flag=True, help="No summary on stderr.")
@click.pass_context
@input_errors
def score(ctx, model, data, output, fmt, only_anomalies, threshold, fail_on_anomaly, id_column,
          chunk_size, delimiter, decimal, invalid_rows, heatmaps, heatmap_scale, explain_top, summary_json,
          summary_top, metrics_file, use_dask, scheduler, quiet):
    """Score every row of DATA (a CSV file, - for stdin; or Parquet: a
    .parquet file, or a folder or glob of them) with MODEL, or every image
    of DATA (a folder, glob, image files, .npy/.npz) with an image MODEL.

    Writes the id columns (or the 1-based 'row' number; for images the
    'path'), 'anomaly_score' (the negative ELBO, in nats), 'p_value'
    (calibrated models only) and 'is_anomaly' for each row. CSV
    columns are matched by name: order does not matter and extra columns are
    ignored. Images are resized to the model's size.

    With --dask, DATA's partitions are scored on a Dask cluster and written
    to the folder -o, one Parquet file per partition (see docs/scale.md).
    """
    if scheduler and not use_dask:
        raise click.UsageError("--scheduler applies with --dask")
    if use_dask:
        from .score_dask import score_with_dask

        check_dialect(delimiter, decimal)
        return score_with_dask(ctx, model, data, output, scheduler=scheduler, threshold=threshold,
                               id_column=id_column, invalid_rows=invalid_rows, delimiter=delimiter, decimal=decimal,
                               summary_top=summary_top, summary_json=summary_json, metrics_file=metrics_file,
                               fail_on_anomaly=fail_on_anomaly, quiet=quiet)
    started = time.monotonic()
    from ..files import atomic_write, check_outputs
    from ..parquet import is_parquet_source
    from ..persistence import load_with_metadata
    from ..schema import id_columns_of
    from ..scoring import score_csv, score_images
    from ..tables import display_name

    check_dialect(delimiter, decimal)
    image_model = _image_model(model, data)
    check_outputs({"-o": output, "--summary-json": summary_json, "--metrics-file": metrics_file,
                   "--heatmaps": heatmaps}, {"MODEL": model, **data_inputs(data, image_model)})
    if heatmaps and not image_model:
        raise click.UsageError("--heatmaps applies to image models only")
    if not heatmaps and ctx.get_parameter_source("heatmap_scale") != click.core.ParameterSource.DEFAULT:
        raise click.UsageError("--heatmap-scale applies with --heatmaps")
    if image_model:
        refuse_csv_options(ctx, ("id_column", "delimiter", "decimal"), data)
    elif is_parquet_source(data):
        refuse_csv_options(ctx, ("delimiter", "decimal"), data, "Parquet")
    if image_model and explain_top:
        raise click.UsageError("--explain applies to tabular models; for an image model, --heatmaps DIR draws "
                               "where each image's score comes from")
    # Scores alone need only the network: skip importing scikit-learn.
    detector, metadata = load_with_metadata(model, scoring_only=not (heatmaps or explain_top))
    ids = id_columns_of(metadata, id_column)
    fmt = fmt or _output_format(output)
    if fmt == "parquet" and output == "-":
        raise click.UsageError("Parquet results are binary: give -o FILE.parquet, not standard output")
    cut = detector.threshold_ if threshold is None else threshold
    with contextlib.ExitStack() as outputs:
        # The metrics' and the summary's temporary files first: an
        # unwritable one fails before anything is scored, and they are
        # renamed into place after the results (the metrics last, as they
        # tell of a success), so a failure leaves no file replaced.
        metrics_stream = outputs.enter_context(atomic_write(metrics_file, "wb")) if metrics_file else None
        summary_stream = outputs.enter_context(atomic_write(summary_json)) if summary_json else None
        results = outputs.enter_context(contextlib.ExitStack())
        stream = results.enter_context(atomic_write(output, "wb" if fmt == "parquet" else "w"))
        common = dict(threshold=cut, fmt=fmt, mark_invalid=invalid_rows == "mark", only_anomalies=only_anomalies,
                      summary_top=summary_top,
                      # Only the stderr warning, the JSON summary and the metrics read the shift test.
                      shift_test=bool(summary_json or metrics_file) or not quiet)
        if image_model:
            summary = score_images(detector, data, stream, batch_size=chunk_size or 256, heatmaps=heatmaps,
                                   heatmap_scale=heatmap_scale, **common)
        else:
            summary = score_csv(detector, data, stream, id_columns=ids, chunk_size=chunk_size or 10_000,
                                delimiter=delimiter, decimal=decimal, explain_top=explain_top, **common)
        # The summary and the metrics are written (and flushed, so that a
        # full device says so now) before the results are renamed into
        # place: a failure of either leaves the results file as it was.
        write_run_files(summary, model, data, started, summary=(summary_json, summary_stream),
                        metrics=(metrics_file, metrics_stream))
        results.close()
    if not quiet:
        _report(summary, display_name(data), "images" if image_model else "rows")
    if fail_on_anomaly and summary.anomalies:
        ctx.exit(EXIT_ANOMALIES)


def write_run_files(run, model, data, started, *, summary, metrics):
    """Write the run's ``--summary-json`` and ``--metrics-file`` (from the
    :class:`~anomvae.results.ScoringSummary` ``run``) into their
    open temporary files (each a ``(path, stream)`` pair, the stream None
    when not asked for), flushed, so that a full device fails here."""
    from ..files import storage_errors
    from ..prometheus import metrics_text
    from ..tables import display_name

    (summary_json, summary_stream), (metrics_file, metrics_stream) = summary, metrics
    if summary_stream is not None:
        with storage_errors(summary_json):
            # Strict JSON: to_dict writes non-finite numbers as strings ("inf").
            json.dump({"file": display_name(data), "model": model, **run.to_dict()}, summary_stream,
                      indent=2, allow_nan=False)
            summary_stream.write("\n")
            summary_stream.flush()
    if metrics_stream is not None:
        labels = {"model": os.path.basename(model), "input": _input_label(data)}
        text = metrics_text(run, labels, duration_seconds=time.monotonic() - started)
        with storage_errors(metrics_file):
            metrics_stream.write(text.encode("utf-8"))
            metrics_stream.flush()


def _output_format(output):
    """The results' format that ``-o``'s name says: jsonl, parquet or csv."""
    from ..parquet import PARQUET_EXTENSIONS

    name = str(output).lower()
    if name.endswith((".jsonl", ".jsonl.gz")):
        return "jsonl"
    return "parquet" if name.endswith(PARQUET_EXTENSIONS) else "csv"


def _input_label(data):
    """The ``input`` label of the metrics: DATA's file or folder name."""
    return "<stdin>" if data == "-" else os.path.basename(os.path.normpath(data))


def _image_model(model, data):
    """Whether MODEL is an image model; an input error when DATA is the other kind."""
    from ..images import is_image_source
    from ..parquet import is_parquet_source
    from ..persistence import read_metadata
    from ..tables import display_name

    image_model = model_kind(read_metadata(model)) == "images"
    if image_model != is_image_source(data):
        kind = "images" if image_model else "CSV data"
        table = "Parquet data" if is_parquet_source(data) else "a CSV file"
        raise InputError(f"{model} is a model of {kind}, but {display_name(data)} is "
                         f"{table if image_model else 'images'}")
    return image_model


def _report(summary, name, what):
    """The shift warning, if any, and the one-line summary, on stderr."""
    shift = summary.score_shift
    if shift is not None and shift.shifted:
        click.echo(
            f"warning: the anomaly scores of {name} differ from the model's {shift.baseline} scores "
            f"(KS statistic {shift.ks_statistic:.3f}, p-value {shift.ks_p_value:.2g} < {shift.level:g}): "
            "the data may have shifted",
            err=True,
        )
    unscored = f", {summary.rows_not_scored} not scored" if summary.rows_not_scored else ""
    click.echo(
        f"{name}: {summary.rows} {what}, {summary.anomalies} anomalies{unscored} "
        f"(threshold {summary.threshold:.4f} nats)",
        err=True,
    )


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("data", type=DATA)
@click.option("--fpr", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.01,
              show_default=True, help="Target false-alarm rate on normal data.")
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write the calibrated model here [default: replace MODEL].")
@csv_dialect_options
@click.option("--invalid-rows", type=click.Choice(["error", "skip"]), default="error", show_default=True,
              help="Rows with empty, NaN or infinite values, or unreadable images: fail naming them, or "
              "leave them out (listed on stderr).")
@threads_option
@click.option("-q", "--quiet", is_flag=True, help="No summary on stderr.")
@click.pass_context
@input_errors
def calibrate(ctx, model, data, fpr, output, delimiter, decimal, invalid_rows, quiet):
    """Set MODEL's threshold from DATA, rows known to be normal (- for stdin),
    or for an image MODEL, images known to be normal (a folder, a glob,
    image files, .npy/.npz).

    The new threshold flags a fraction FPR of such rows or images, and
    'anomvae score' adds a 'p_value' column. DATA should not be the
    training data.
    """
    from ..files import check_outputs
    from ..parquet import is_parquet_source
    from ..persistence import load_with_metadata, save
    from ..scoring import calibrate_images, feature_names
    from ..tables import RowNames, display_name, read_feature_rows

    check_dialect(delimiter, decimal)
    image_model = _image_model(model, data)
    # Without -o, or with -o MODEL, the model is replaced by design.
    check_outputs({"-o": output}, data_inputs(data, image_model))
    if image_model:
        refuse_csv_options(ctx, ("delimiter", "decimal"), data)
    elif is_parquet_source(data):
        refuse_csv_options(ctx, ("delimiter", "decimal"), data, "Parquet")
    detector, metadata = load_with_metadata(model)
    name = display_name(data)
    if image_model:
        count, skipped = calibrate_images(detector, data, fpr=fpr, skip_unreadable=invalid_rows == "skip")
        what = "images"
        note = f"{name}: skipped {len(skipped)} image(s) that could not be read: {_problems_text(skipped)}"
    else:
        X, skipped = read_feature_rows(data, feature_names(detector), detector.standardizer_, delimiter=delimiter,
                                       decimal=decimal, skip_invalid=invalid_rows == "skip")
        where = RowNames(data).text(skipped) if len(skipped) else ""
        if not len(X):
            raise InputError(f"{name}: every row was skipped for empty, NaN or infinite values "
                             f"({where}); nothing to calibrate on")
        detector.calibrate(X, fpr=fpr)
        count, what = len(X), "rows"
        note = f"{name}: skipped {len(skipped)} row(s) with empty, NaN or infinite values at {where}"
    output = output or model
    save(detector, output, extra=metadata.get("extra"))
    if not quiet:
        if len(skipped):
            click.echo(note, err=True)
        click.echo(
            f"{output}: calibrated on {count} {what} of {name} for a false-alarm rate of {fpr:g}; "
            f"threshold {detector.threshold_:.4f} nats",
            err=True,
        )


def _problems_text(problems, shown=5):
    """``path (why); ...`` for the first ``shown`` of (path, why) pairs, and how many more."""
    text = "; ".join(f"{path} ({why})" for path, why in problems[:shown])
    return text + (f"; and {len(problems) - shown} more" if len(problems) > shown else "")

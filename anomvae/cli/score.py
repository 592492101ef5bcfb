"""``anomvae score`` and ``anomvae calibrate``: score rows or images with a
model, and set a model's threshold from normal reference rows."""

import contextlib
import json
import os

import click

from .app import EXIT_ANOMALIES, InputError, input_errors, main, model_kind
from .options import DATA, Character, FiniteFloat, check_dialect, refuse_csv_options, threads_option


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("data", type=DATA)
@click.option("-o", "--output", default="-", type=click.Path(dir_okay=False, allow_dash=True),
              show_default=True, help="Where to write the results.")
@click.option("--format", "fmt", type=click.Choice(["csv", "jsonl"]), default=None,
              help="Output format [default: jsonl for a .jsonl output, else csv].")
@click.option("--only-anomalies", is_flag=True, help="Write only flagged rows (and rows not scored).")
@click.option("--threshold", type=FiniteFloat(), help="Anomaly-score cut in nats, instead of the model's.")
@click.option("--fail-on-anomaly", is_flag=True, help="Exit with code 1 when any row is flagged.")
@click.option("--id-column", multiple=True, help="Row identifier column(s) to copy to the output "
              "[default: those given at fit; else a 'row' number].")
@click.option("--chunk-size", type=click.IntRange(min=1), default=None, show_default="10000 rows, 256 images",
              help="Rows or images read and scored at a time; bounds memory.")
@click.option("--delimiter", type=Character(), default=",", show_default=True,
              help="Field delimiter of the CSV (\\t or tab for a tab).")
@click.option("--decimal", type=Character(), default=".", show_default=True,
              help="Decimal mark of the CSV's numbers (',' for 1,5).")
@click.option("--invalid-rows", type=click.Choice(["error", "mark"]), default="error", show_default=True,
              help="Rows with empty, NaN or infinite values: fail naming them, or write them "
              "unscored with a 'status' column saying why.")
@click.option("--heatmaps", type=click.Path(file_okay=False), help="Image models: write per image a PNG "
              "of where its anomaly score comes from into this folder.")
@click.option("--explain", "explain_top", type=click.IntRange(min=0), default=0, metavar="K",
              help="Add an 'explanation' of each flagged row: its K features that add most to "
              "the anomaly score, with observed and reconstructed values.")
@click.option("--summary-json", type=click.Path(dir_okay=False, allow_dash=True),
              help="Also write a JSON summary (counts, threshold, top anomalies, score shift) here.")
@click.option("--summary-top", type=click.IntRange(min=0), default=10, show_default=True,
              help="How many of the highest-scoring rows --summary-json lists.")
@threads_option
@click.option("-q", "--quiet", is_flag=True, help="No summary on stderr.")
@click.pass_context
@input_errors
def score(ctx, model, data, output, fmt, only_anomalies, threshold, fail_on_anomaly, id_column,
          chunk_size, delimiter, decimal, invalid_rows, heatmaps, explain_top, summary_json, summary_top, quiet):
    """Score every row of DATA (a CSV file, - for stdin) with MODEL, or every
    image of DATA (a folder, glob, image files, .npy/.npz) with an image MODEL.

    Writes the id columns (or the 1-based 'row' number; for images the
    'path'), 'anomaly_score' (the negative ELBO, in nats), 'p_value'
    (calibrated tabular models only) and 'is_anomaly' for each row. CSV
    columns are matched by name: order does not matter and extra columns are
    ignored. Images are resized to the model's size.
    """
    from ..files import atomic_write, check_outputs
    from ..images import is_image_source
    from ..persistence import load_with_metadata, read_metadata
    from ..scoring import score_csv, score_images
    from ..tables import display_name

    check_outputs({"-o": output, "--summary-json": summary_json, "--heatmaps": heatmaps},
                  {"MODEL": model, "DATA": data})
    check_dialect(delimiter, decimal)
    image_model = model_kind(read_metadata(model)) == "images"
    if image_model != is_image_source(data):
        kind = "images" if image_model else "CSV data"
        raise InputError(f"{model} is a model of {kind}, but {display_name(data)} is "
                         f"{'a CSV file' if image_model else 'images'}")
    if heatmaps and not image_model:
        raise click.UsageError("--heatmaps applies to image models only")
    if summary_json and (summary_json == output or os.path.abspath(summary_json) == os.path.abspath(output)):
        raise click.UsageError("--summary-json and -o name the same file; give the summary its own")
    if image_model:
        refuse_csv_options(ctx, ("id_column", "delimiter", "decimal"), data)
    if image_model and (explain_top or summary_json):
        raise click.UsageError("--explain and --summary-json apply to tabular models only")
    # Scores alone need only the network: skip importing scikit-learn.
    detector, metadata = load_with_metadata(model, scoring_only=not (heatmaps or explain_top))
    ids = list(id_column) or list(metadata.get("extra", {}).get("id_columns", []))
    fmt = fmt or ("jsonl" if str(output).endswith((".jsonl", ".jsonl.gz")) else "csv")
    cut = detector.threshold_ if threshold is None else threshold
    with contextlib.ExitStack() as outputs:
        # The summary's temporary file first: an unwritable --summary-json
        # fails before anything is scored, and it is renamed into place
        # after the results, so a failure leaves neither file replaced.
        summary_stream = outputs.enter_context(atomic_write(summary_json)) if summary_json else None
        results = outputs.enter_context(contextlib.ExitStack())
        stream = results.enter_context(atomic_write(output))
        if image_model:
            summary = score_images(
                detector, data, stream, threshold=cut, fmt=fmt, batch_size=chunk_size or 256,
                mark_invalid=invalid_rows == "mark", only_anomalies=only_anomalies, heatmaps=heatmaps,
            )
        else:
            summary = score_csv(
                detector, data, stream, id_columns=ids, threshold=cut, fmt=fmt, chunk_size=chunk_size or 10_000,
                delimiter=delimiter, decimal=decimal, mark_invalid=invalid_rows == "mark",
                only_anomalies=only_anomalies,
                explain_top=explain_top, summary_top=summary_top,
                # Only the stderr warning and the JSON summary read the shift test.
                shift_test=bool(summary_json) or not quiet,
            )
        results.close()  # the results are in place: a failure from here on is the summary's
        if summary_stream is not None:
            # Strict JSON: to_dict writes non-finite numbers as strings ("inf").
            json.dump({"file": display_name(data), "model": model, **summary.to_dict()}, summary_stream, indent=2,
                      allow_nan=False)
            summary_stream.write("\n")
    if not quiet:
        _report(summary, display_name(data), "images" if image_model else "rows")
    if fail_on_anomaly and summary.anomalies:
        ctx.exit(EXIT_ANOMALIES)


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
@click.option("--delimiter", type=Character(), default=",", show_default=True,
              help="Field delimiter of the CSV (\\t or tab for a tab).")
@click.option("--decimal", type=Character(), default=".", show_default=True,
              help="Decimal mark of the CSV's numbers (',' for 1,5).")
@click.option("--invalid-rows", type=click.Choice(["error", "skip"]), default="error", show_default=True,
              help="Rows with empty, NaN or infinite values: fail naming them, or leave them out.")
@threads_option
@click.option("-q", "--quiet", is_flag=True, help="No summary on stderr.")
@input_errors
def calibrate(model, data, fpr, output, delimiter, decimal, invalid_rows, quiet):
    """Set MODEL's threshold from DATA, rows known to be normal (- for stdin).

    The new threshold flags a fraction FPR of such rows, and 'anomvae score'
    adds a 'p_value' column. DATA should not be the training data.
    """
    from ..files import check_outputs
    from ..persistence import load_with_metadata, save
    from ..scoring import feature_names
    from ..tables import display_name, lines_text, read_feature_rows

    check_dialect(delimiter, decimal)
    # Without -o, or with -o MODEL, the model is replaced by design.
    check_outputs({"-o": output}, {"DATA": data})
    detector, metadata = load_with_metadata(model)
    X, skipped = read_feature_rows(data, feature_names(detector), detector.standardizer_, delimiter=delimiter,
                                   decimal=decimal, skip_invalid=invalid_rows == "skip")
    name = display_name(data)
    if not len(X):
        raise InputError(f"{name}: every row was skipped for empty, NaN or infinite values "
                         f"(line(s) {lines_text(skipped)}); nothing to calibrate on")
    detector.calibrate(X, fpr=fpr)
    output = output or model
    save(detector, output, extra=metadata.get("extra"))
    if not quiet:
        if skipped:
            click.echo(f"{name}: skipped {len(skipped)} row(s) with empty, NaN or infinite values "
                       f"at line(s) {lines_text(skipped)}", err=True)
        click.echo(
            f"{output}: calibrated on {len(X)} rows of {name} for a false-alarm rate of {fpr:g}; "
            f"threshold {detector.threshold_:.4f} nats",
            err=True,
        )

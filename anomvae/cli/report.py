"""``anomvae report``: an HTML page about a model and, optionally, a batch
(the work is :func:`anomvae.reporting.report`)."""

import click

from .app import InputError, input_errors, main
from .options import (
    DATA,
    FiniteFloat,
    check_dialect,
    csv_dialect_options,
    data_inputs,
    given_options,
    refuse_csv_options,
    threads_option,
)


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.argument("data", type=DATA, required=False)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False, allow_dash=True),
              help="Where to write the HTML page (- for standard output).")
@click.option("--top", type=click.IntRange(min=0), default=20, show_default=True, metavar="N",
              help="Rows (or images) in the table of the highest scores.")
@click.option("--explain", "explain_top", type=click.IntRange(min=0), default=3, show_default=True, metavar="K",
              help="Tables: features listed per top row, with observed and reconstructed values.")
@click.option("--threshold", type=FiniteFloat(), help="Anomaly-score cut in nats, instead of the model's.")
@click.option("--id-column", multiple=True, help="Row identifier column(s) shown in the table "
              "[default: those given at fit; else the 'row' number].")
@click.option("--chunk-size", type=click.IntRange(min=1), default=None, show_default="10000 rows, 256 images",
              help="Rows or images read and scored at a time; bounds memory.")
@csv_dialect_options
@click.option("--invalid-rows", type=click.Choice(["error", "mark"]), default="error", show_default=True,
              help="Rows with empty, NaN or infinite values (or unreadable images): fail naming them, "
              "or count them as not scored.")
@threads_option
@click.option("-q", "--quiet", is_flag=True, help="No summary on stderr.")
@click.pass_context
@input_errors
def report(ctx, model, data, output, top, explain_top, threshold, id_column, chunk_size, delimiter, decimal,
           invalid_rows, quiet):
    """Write an HTML report on MODEL and, if given, the batch DATA (as for
    'anomvae score': a CSV file, - for stdin, Parquet data, or images for
    an image model).

    The page shows the model and how its threshold was set, its training
    curves, and for DATA the counts, the shift test, the histogram of the
    batch's scores over the model's, the top rows with p-values and the
    features behind their scores, and for images the most anomalous ones
    beside their heatmaps. It opens offline: no JavaScript, no external
    file. Needs pip install 'anomvae[report]' (matplotlib).
    """
    from .. import plots

    try:
        plots.require()
    except ImportError:
        raise InputError(f"anomvae report needs matplotlib: {plots.INSTALL_HINT}") from None
    from ..files import check_outputs
    from ..parquet import is_parquet_source
    from ..reporting import report as write_report
    from ..tables import display_name
    from .score import _image_model, _report

    check_dialect(delimiter, decimal)
    image_model = data is not None and _image_model(model, data)
    check_outputs({"-o": output}, {"MODEL": model, **({} if data is None else data_inputs(data, image_model))})
    if data is None:
        batch_only = given_options(ctx, ("id_column", "delimiter", "decimal", "invalid_rows", "chunk_size", "top",
                                         "explain_top", "threshold"))
        if batch_only:
            raise click.UsageError(f"{', '.join(batch_only)} apply to a batch: give DATA after MODEL")
    elif image_model:
        refuse_csv_options(ctx, ("id_column", "delimiter", "decimal"), data)
    elif is_parquet_source(data):
        refuse_csv_options(ctx, ("delimiter", "decimal"), data, "Parquet")
    findings = write_report(model, data, output, images=image_model, threshold=threshold, top=top,
                            explain_top=explain_top, id_columns=id_column, chunk_size=chunk_size,
                            delimiter=delimiter, decimal=decimal, invalid_rows=invalid_rows)
    if quiet:
        return
    if findings is not None:
        _report(findings.summary, display_name(data), findings.what)
    click.echo(f"{output}: report on {model}" + (f" and {display_name(data)}" if data is not None else ""),
               err=True)

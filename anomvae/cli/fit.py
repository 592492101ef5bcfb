"""``anomvae fit``: train a model on a CSV file or on images."""

import warnings

import click

from .app import InputError, input_errors, main
from .options import (
    DATA,
    IMAGE_DEFAULTS,
    CommaList,
    ImageSize,
    check_dialect,
    csv_dialect_options,
    data_inputs,
    estimator_options,
    estimator_params,
    progress,
    refit_note,
    refuse_csv_options,
    report_warnings,
    threads_option,
)


@main.command()
@click.argument("data", type=DATA)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Model file to write.")
@click.option("--columns", type=CommaList(), help="Feature columns to use (default: every numeric column).")
@click.option("--exclude", type=CommaList(), default=(), help="Columns to leave out of the features.")
@click.option("--id-column", multiple=True, help="Column that identifies a row; kept out of training and "
              "copied to score output. Repeatable.")
@csv_dialect_options
@click.option("--invalid-rows", type=click.Choice(["error", "skip"]), default="error", show_default=True,
              help="Rows with empty, NaN or infinite values: fail naming them, or leave them out "
              "(their lines are listed on stderr).")
@click.option("--images", "force_images", is_flag=True, help="Read DATA as images even if its name "
              "does not say so (folders, globs, image files and .npy/.npz are detected).")
@click.option("--image-size", type=ImageSize(), help="Resize images to HxW (or NxN) pixels "
              "[default: the first image's size].")
@click.option("--grayscale", is_flag=True, help="Read images as one grey channel [default: the first "
              "image's mode].")
@estimator_options
@threads_option
@click.option("-q", "--quiet", is_flag=True, help="No progress line and no summary on stderr.")
@click.pass_context
@input_errors
def fit(ctx, data, output, columns, exclude, id_column, delimiter, decimal, invalid_rows, force_images,
        image_size, grayscale, quiet, **values):
    """Train a model on DATA: the numeric columns of a CSV file (- for stdin)
    or of Parquet data (a .parquet file, or a folder or glob of them), or
    images (a folder, a glob, image files, or a .npy/.npz array)."""
    from .. import tables
    from ..detector import VAEAnomalyDetector
    from ..files import check_outputs
    from ..images import is_image_source
    from ..parquet import is_parquet_source
    from ..preprocessing import Standardizer
    from ..results import check_id_columns

    images = force_images or is_image_source(data)
    check_outputs({"-o": output}, data_inputs(data, images))
    params = estimator_params(values)
    if images:
        refuse_csv_options(ctx, ("columns", "exclude", "id_column", "delimiter", "decimal", "invalid_rows"), data)
        for param, default in IMAGE_DEFAULTS.items():
            if ctx.get_parameter_source(param) == click.core.ParameterSource.DEFAULT:
                params[param] = default
        return _fit_images(VAEAnomalyDetector(**params), data, output, image_size, grayscale, quiet)
    if image_size or grayscale:
        raise click.UsageError(f"--image-size and --grayscale apply to images; {data} is read as CSV")
    check_dialect(delimiter, decimal)
    if is_parquet_source(data):
        refuse_csv_options(ctx, ("delimiter", "decimal"), data, "Parquet")
    detector = VAEAnomalyDetector(**params)
    detector.check_params()  # fail on a bad option before reading any data
    check_id_columns(id_column)
    name = tables.display_name(data)
    frame = tables.read_table(data, delimiter=delimiter, decimal=decimal, text_columns=id_column)
    features, skipped = tables.select_features(
        frame, columns=columns, exclude=exclude, id_columns=id_column, name=name, decimal=decimal
    )
    if skipped and not quiet:
        click.echo(f"{name}: ignoring non-numeric column(s): {', '.join(skipped)}", err=True)
    X = tables.to_numeric(frame, features, name=name, decimal=decimal)
    invalid, reasons = Standardizer.identity(len(features), detector.likelihood).unusable_rows(X, features)
    if invalid.any():
        rows, names = frame.index[invalid], tables.RowNames(data)
        if invalid_rows == "error":
            raise tables.invalid_rows_error(name, rows, reasons, "fix them or pass --invalid-rows skip", names)
        X = X[~invalid]
        if len(X) < 2:
            raise InputError(f"{name}: {len(X)} row(s) left after skipping {invalid.sum()} with empty, NaN or "
                             f"infinite values ({names.text(rows)}); fit needs at least 2")
        if not quiet:
            click.echo(f"{name}: skipped {invalid.sum()} row(s) with empty, NaN or infinite values "
                       f"at {names.text(rows)}", err=True)

    import pandas as pd

    extra = {"id_columns": list(id_column), "training": {"file": name, "rows": int(len(X))}}
    _train_and_save(detector, pd.DataFrame(X, columns=features), output, extra, quiet)
    if not quiet:
        click.echo(
            f"{output}: trained on {len(X)} rows x {len(features)} features for {detector.n_epochs_} "
            f"epochs (best {detector.best_epoch_})"
            f"{refit_note(detector.n_refit_excluded_, detector.refit_inliers)}; "
            f"threshold {detector.threshold_:.4f} nats",
            err=True,
        )


def _fit_images(detector, data, output, image_size, grayscale, quiet):
    from .. import images

    if detector.architecture == "conv" and detector.image_shape is not None:
        raise click.UsageError("the image shape comes from --image-size and --grayscale")
    detector.check_params()
    height, width, gray = images.probe_images(data)
    size = image_size or (height, width)
    gray = gray or grayscale
    paths, X = images.read_images(data, size=size, grayscale=gray)
    detector.set_params(image_shape=(1 if gray else 3, *size))
    extra = {
        "id_columns": [],
        "input": "images",
        "image_size": list(size),
        "color": "grayscale" if gray else "rgb",
        "training": {"file": str(data), "rows": len(paths)},
    }
    _train_and_save(detector, X, output, extra, quiet)
    if not quiet:
        click.echo(
            f"{output}: trained on {len(paths)} images of {size[0]}x{size[1]} "
            f"{'grey' if gray else 'RGB'} pixels for {detector.n_epochs_} epochs (best {detector.best_epoch_})"
            f"{refit_note(detector.n_refit_excluded_, detector.refit_inliers)}; "
            f"threshold {detector.threshold_:.4f} nats",
            err=True,
        )


def _train_and_save(detector, X, output, extra, quiet):
    from ..persistence import save

    with warnings.catch_warnings(record=True) as caught, progress(quiet):
        warnings.simplefilter("always")
        detector.fit(X)
    report_warnings(caught, quiet)
    save(detector, output, extra=extra)


"""``anomvae info``: describe a model file from its metadata, without torch."""

import json

import click

from .app import input_errors, main, model_kind
from .options import COLORS, refit_note


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the metadata as JSON.")
@input_errors
def info(model, as_json):
    """Describe MODEL: version, input, network, features (for image models
    their shape, colour mode and the size score resizes images to),
    parameters, threshold, training."""
    from ..persistence import read_metadata

    metadata = read_metadata(model)
    summary = describe(model, metadata)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        click.echo("\n".join(_text(summary)))


def _variance_floors(fitted):
    """The Gaussian likelihood's variance floors as a list (None for other
    likelihoods)."""
    from ..config import NetworkConfig

    floors = NetworkConfig.from_dict(fitted["module_config"]).variance_floors()
    return None if floors is None else floors.tolist()


def describe(path, metadata):
    """What ``info --json`` prints about the model file at ``path``, from
    metadata that :func:`~anomvae.persistence.read_metadata` checked."""
    from ..schema import id_columns_of

    fitted = metadata["fitted"]
    history = fitted.get("history_") or {}
    kind = model_kind(metadata)
    shape = fitted.get("image_shape_")  # what score reads images at, as (C, H, W)
    return {
        "file": path,
        "anomvae_version": metadata.get("anomvae_version"),
        "format_version": metadata["format_version"],
        "created": metadata.get("created"),
        "input": kind,
        "architecture": metadata["params"].get("architecture"),
        "likelihood": metadata["params"].get("likelihood"),
        "image_shape": shape,
        "color": None if shape is None else COLORS.get(shape[0]),
        "image_size": shape[1:] if shape is not None and kind == "images" else None,
        "n_features": fitted.get("n_features_in_"),
        "features": fitted.get("feature_names_in_"),
        "id_columns": id_columns_of(metadata),
        "threshold": fitted.get("threshold_"),
        "calibration": (
            None if fitted.get("reference_scores_") is None else
            {"fpr": fitted.get("calibration_fpr_"), "reference_rows": len(fitted["reference_scores_"])}
        ),
        "latent_dim": fitted.get("latent_dim_"),
        # Posterior-collapse diagnosis: latent units in use, and each unit's mean KL
        # (nats) over the training rows; None in files written before anomvae recorded them.
        "active_units": fitted.get("active_units_"),
        "kl_per_dim": fitted.get("kl_per_dim_"),
        # Per feature, in standardised units; None unless the likelihood is Gaussian.
        "variance_floors": _variance_floors(fitted),
        "device": fitted.get("device_"),
        # trim_by first: the key order info --json has always had.
        "params": {"trim_by": metadata["params"].get("trim_by"), **metadata["params"]},
        "training": {
            **metadata.get("extra", {}).get("training", {}),
            "epochs": fitted.get("n_epochs_"),
            "best_epoch": fitted.get("best_epoch_"),
            # refit_inliers: rows the second network was trained without; None when no refit was asked for.
            "refit_excluded": fitted.get("n_refit_excluded_"),
            "final_train_loss": (history.get("train_loss") or [None])[-1],
            # None when nothing was monitored (no validation split, no early stopping).
            "best_val_loss": min((v for v in history.get("val_loss") or [] if v is not None and v == v),
                                 default=None),
        },
    }


def _text(summary):
    """The lines ``info`` prints for :func:`describe`'s summary."""
    kind, shape, training = summary["input"], summary["image_shape"], summary["training"]
    features = summary["features"] or [f"x{i}" for i in range(summary["n_features"] or 0)]
    lines = [
        f"model:      {summary['file']} (anomvae {summary['anomvae_version']}, format {summary['format_version']}, "
        f"created {summary['created']})",
        f"input:      {'images' if kind == 'images' else 'CSV'}",
        f"network:    {summary['architecture']}, {summary['likelihood']} likelihood",
    ]
    if shape is None:
        lines.append(f"features:   {len(features)}: {', '.join(features)}")
    else:
        # Thousands of pixel names x0, x1, ... would say nothing.
        lines += [f"features:   {summary['n_features']} pixels", _image_line(summary)]
    floors = summary["variance_floors"]
    lines += [
        f"id columns: {', '.join(summary['id_columns']) or '(none)'}",
        f"threshold:  {_number(summary['threshold'], '.6g')} nats (negative ELBO)",
        "calibrated: " + (
            f"for a false-alarm rate of {_number(summary['calibration']['fpr'], 'g')} on "
            f"{summary['calibration']['reference_rows']} reference {'images' if kind == 'images' else 'rows'}"
            if summary["calibration"] else "no (threshold from contamination)"
        ),
        f"training:   {training.get('rows', '?')} {'images' if kind == 'images' else 'rows'} from "
        f"{training.get('file', '?')}; {training['epochs']} epochs, best {training['best_epoch']}"
        f"{refit_note(training['refit_excluded'], summary['params'].get('refit_inliers'))}; "
        f"final train loss {_number(training['final_train_loss'], '.4f')}, " + (
            f"best validation loss {training['best_val_loss']:.4f}" if training["best_val_loss"] is not None
            else "no validation loss monitored"
        ),
        f"latent dim: {summary['latent_dim']}, trained on {summary['device']}",
        _latent_line(summary),
    ]
    if floors is not None:
        lines.append(floors_line(floors))
    lines.append("parameters: " + ", ".join(f"{k}={v}" for k, v in sorted(summary["params"].items())))
    return lines


def _latent_line(summary):
    """How many latent units the network uses, and each unit's KL."""
    active, kl = summary["active_units"], summary["kl_per_dim"]
    if active is None:
        return "latent use: not recorded (the file predates it)"
    from ..latent import is_collapsed, kl_text

    collapsed = " (posterior collapse: most units inactive)" if is_collapsed(active, len(kl)) else ""
    return f"latent use: {active} of {len(kl)} units active{collapsed}; KL per unit {kl_text(kl)} nats"


def _number(value, spec):
    """``value`` formatted by ``spec``, or "?" for a value not recorded."""
    return "?" if value is None else format(value, spec)


def floors_line(floors):
    """The Gaussian likelihood's variance floors (standardised units) in a
    line: the common one, and the range of those a value grid raised."""
    import numpy as np

    from ..preprocessing import DEFAULT_MIN_VARIANCE

    floors = np.asarray(floors)

    def span(values):
        low, high = values.min(), values.max()
        return f"{low:.3g}" if low == high else f"{low:.3g} to {high:.3g}"

    raised = floors[floors > DEFAULT_MIN_VARIANCE]
    if raised.size in (0, floors.size):
        return f"variance:   floor {span(floors)} on every feature (standardised units)"
    kept = floors.size - raised.size
    return (
        f"variance:   floor {DEFAULT_MIN_VARIANCE:g} on {kept} feature{'s' * (kept > 1)}, "
        f"{span(raised)} on {raised.size} (from their value grids; standardised units)"
    )


def _image_line(summary):
    channels, height, width = summary["image_shape"]
    color = {1: "grayscale", 3: "RGB"}.get(channels, f"{channels} channels")
    line = f"image:      {channels}x{height}x{width} (C x H x W), {color}; "
    if summary["image_size"] is None:
        # A conv model saved from Python without extra={"input": "images"}.
        return line + "not marked as an image model, so score reads CSV rows of pixels"
    return line + f"score resizes every image to {height}x{width} pixels (H x W)"

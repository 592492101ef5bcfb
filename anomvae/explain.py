"""Why a row was flagged: each feature's share of its anomaly score.

Tables get the features that add most to a row's score, with observed and
reconstructed values; images get a heatmap of where the score comes from.
Both read :meth:`~anomvae.fitted.FittedVAE.feature_contributions`.
"""

import math
from dataclasses import dataclass

import numpy as np


def explain(detector, X, n_features):
    """The ``n_features`` features that contribute most to each row's
    anomaly score, most first.

    Parameters
    ----------
    detector : VAEAnomalyDetector
        Fitted.
    X : DataFrame or array of shape (n_samples, n_features_in_)
    n_features : int
        How many features to list per row (at most ``n_features_in_``).

    Returns
    -------
    explanations : list of list of dict
        Per row, dicts with ``feature`` (its name, or ``x<j>`` without
        names), ``contribution`` (nats, see
        :meth:`~anomvae.VAEAnomalyDetector.feature_contributions`),
        ``observed`` and ``reconstructed`` (the decoder's mean at the
        posterior mean, in the data's units).
    """
    contributions = detector.feature_contributions(X)
    reconstructed = detector.inverse_transform(detector.transform(X))
    observed = np.asarray(X, dtype=np.float64)
    names = getattr(detector, "feature_names_in_", None)
    names = [str(n) for n in names] if names is not None else [f"x{j}" for j in range(observed.shape[1])]
    # A stable sort keeps ties in column order, so explanations are reproducible.
    order = np.argsort(-contributions, axis=1, kind="stable")[:, :n_features]
    return [
        [{"feature": names[j], "contribution": float(contributions[i, j]),
          "observed": float(observed[i, j]), "reconstructed": float(reconstructed[i, j])} for j in row]
        for i, row in enumerate(order)
    ]


def format_explanation(items):
    """One compact line for a CSV cell, e.g.
    ``AC=12.3 nats (observed 5.1, reconstructed 0.2); FM=2.01 nats (...)``."""
    return "; ".join(
        f"{e['feature']}={e['contribution']:.4g} nats (observed {e['observed']:.6g}, "
        f"reconstructed {e['reconstructed']:.6g})"
        for e in items
    )


# A pixel drawn at full colour contributes this many nats more than the
# average pixel of a typical normal image: the model found its value(s)
# 100 times less likely (see HeatScale.for_model).
HEAT_RANGE = math.log(100.0)
# Opacity of the red overlay at full colour: the image stays visible under it.
MAX_OPACITY = 0.85
# The image is drawn at reduced contrast, from dark grey to light grey, so
# that red shows on black pixels as well as on white ones.
_BASE_LEVELS = (0.2, 0.8)
_RED = np.array([1.0, 0.0, 0.0])
_INK, _CALM, _HOT = (32, 32, 32), (40, 110, 40), (200, 0, 0)


@dataclass(frozen=True)
class HeatScale:
    """The colour scale of a heatmap, in nats per pixel (a pixel's
    contributions summed over its channels): ``low`` and below are clear,
    ``high`` and above drawn at full colour, linearly between.

    Attributes
    ----------
    low, high : float
        ``low < high``.
    per_image : bool
        Whether the scale is the image's own (:meth:`for_image`) rather
        than the model's (:meth:`for_model`).
    """

    low: float
    high: float
    per_image: bool = False

    @classmethod
    def for_model(cls, model):
        """One scale for every image a model scores.

        ``low`` is the average contribution per pixel of a typical normal
        image: the median of the model's baseline anomaly scores (the
        calibration images' when it is calibrated, else the training
        images') divided by its ``H * W`` pixels. ``high`` is ``low +
        ln(100)`` (:data:`HEAT_RANGE`, 4.6 nats): a pixel is drawn at full
        colour when the model found its value 100 times less likely than
        that. Most pixels of a normal image stay near or below ``low``, and
        the pixels that make an anomaly anomalous stand far above it, so
        normal images look calm and anomalies hot, on the same scale.
        ``low`` is 0 for a model that stores no baseline scores.
        """
        reference = getattr(model, "reference_scores_", None)
        baseline = reference if reference is not None else getattr(model, "training_scores_", None)
        _, height, width = model.image_shape_
        low = float(np.median(baseline)) / (height * width) if baseline is not None and len(baseline) else 0.0
        return cls(low, low + HEAT_RANGE)

    @classmethod
    def for_image(cls, contributions, image_shape):
        """An image's own scale: 0 nats to its largest pixel contribution
        (1 nat when none is positive). It shows *where* an image's score
        comes from, but every image looks equally hot."""
        top = float(_pixel_heat(contributions, image_shape).max())
        return cls(0.0, top if top > 0 else 1.0, per_image=True)

    def opacity(self, heat):
        """Overlay opacity, 0 to :data:`MAX_OPACITY`, of per-pixel heat in nats."""
        return MAX_OPACITY * np.clip((np.asarray(heat, dtype=np.float64) - self.low) / (self.high - self.low), 0, 1)


def _pixel_heat(contributions, image_shape):
    return np.asarray(contributions, dtype=np.float64).reshape(image_shape).sum(axis=0)


def heatmap_image(pixels, contributions, image_shape, *, scale=None, score=None, threshold=None, min_side=256,
                  legend=True):
    """A picture of where an image's anomaly score comes from.

    The image, enlarged (nearest neighbour) so its shorter side is at least
    ``min_side`` pixels and drawn at reduced contrast (black as dark grey,
    white as light grey, so that red shows on both), under a red overlay
    whose opacity grows with each pixel's contribution to the score (summed
    over channels) on ``scale``, from clear to 85% opaque.
    Below it, when ``score`` is given, a line with the flag (``ANOMALY``
    when ``score > threshold``, else ``normal``), the score and the
    threshold; and with ``legend``, a colour bar labelled with the scale's
    ends in nats per pixel.

    Parameters
    ----------
    pixels : ndarray of shape (C * H * W,)
        Values in [0, 1], channels first.
    contributions : ndarray of shape (C * H * W,)
        One row of :meth:`VAEAnomalyDetector.feature_contributions`.
    image_shape : (int, int, int)
    scale : HeatScale, default=None
        ``None`` uses the image's own (:meth:`HeatScale.for_image`). Pass
        :meth:`HeatScale.for_model` to compare images.
    score : float, default=None
        The image's anomaly score, in nats.
    threshold : float, default=None
        The anomaly-score cut the flag is read against; needed with ``score``.
    min_side : int, default=256
    legend : bool, default=True

    Returns
    -------
    image : PIL.Image.Image, RGB

    .. versionchanged:: 0.5.0
       ``scale`` replaces ``vmax``; the caption and the legend are new.
    """
    from PIL import Image

    if score is not None and threshold is None:
        raise ValueError("a heatmap with a score needs the threshold its flag is read against")
    channels, height, width = image_shape
    scale = HeatScale.for_image(contributions, image_shape) if scale is None else scale
    base = np.asarray(pixels, dtype=np.float64).reshape(image_shape)
    base = np.repeat(base, 3, axis=0) if channels == 1 else base
    base = _BASE_LEVELS[0] + (_BASE_LEVELS[1] - _BASE_LEVELS[0]) * base
    alpha = scale.opacity(_pixel_heat(contributions, image_shape))
    blended = (1.0 - alpha) * base + alpha * _RED[:, None, None]
    picture = Image.fromarray(_bytes(blended.transpose(1, 2, 0)), mode="RGB")
    factor = max(1, -(-min_side // min(height, width)))
    picture = picture.resize((width * factor, height * factor), Image.Resampling.NEAREST)
    if score is None and not legend:
        return picture
    return _with_caption(picture, scale, score, threshold, legend)


def _bytes(values):
    return (np.clip(values, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _with_caption(picture, scale, score, threshold, legend):
    """``picture`` above a white band with the flag and score, and the legend."""
    from PIL import Image, ImageDraw, ImageFont

    width = picture.width
    size = max(10, min(24, width // 18))
    font = ImageFont.load_default(size=size)
    line, pad = size + size // 3, max(3, size // 3)
    rows = (score is not None) + 2 * legend
    sheet = Image.new("RGB", (width, picture.height + rows * line + 2 * pad), "white")
    sheet.paste(picture, (0, 0))
    draw = ImageDraw.Draw(sheet)
    y = picture.height + pad
    if score is not None:
        flagged = bool(score > threshold)
        flag = "ANOMALY" if flagged else "normal"
        draw.text((pad, y), flag, fill=_HOT if flagged else _CALM, font=font)
        x = pad + draw.textlength(flag + "  ", font=font)
        draw.text((x, y), f"{_number(score)} {'>' if flagged else '<='} {_number(threshold)} nats", fill=_INK,
                  font=font)
        y += line
    if legend:
        _draw_legend(sheet, draw, font, scale, pad, y, size)
    return sheet


def _draw_legend(sheet, draw, font, scale, pad, y, size):
    """A colour bar of the overlay over the image's mid grey, from clear
    to full colour, with the scale's ends beneath it."""
    from PIL import Image

    bar_width, bar_height = sheet.width - 2 * pad, max(6, size // 2)
    alpha = MAX_OPACITY * np.linspace(0.0, 1.0, bar_width)
    colours = (1.0 - alpha)[:, None] * 0.5 + alpha[:, None] * _RED[None, :]
    sheet.paste(Image.fromarray(np.repeat(_bytes(colours)[None], bar_height, axis=0), mode="RGB"), (pad, y))
    draw.rectangle((pad, y, pad + bar_width - 1, y + bar_height - 1), outline=_INK)
    y += bar_height + 2
    draw.text((pad, y), _number(scale.low, 3), fill=_INK, font=font)
    right = f"{_number(scale.high, 3)} nats/pixel" + (" (this image)" if scale.per_image else "")
    draw.text((pad + bar_width - draw.textlength(right, font=font), y), right, fill=_INK, font=font)


def _number(value, digits=4):
    """``value`` to ``digits`` significant digits, or whole from 1,000 to 10 million."""
    if not math.isfinite(value):
        return str(value)
    return f"{value:.{digits}g}" if abs(value) < 1e3 else f"{value:.0f}" if abs(value) < 1e7 else f"{value:.3g}"


def explanation_cells(detector, X, flagged, features, n_features, fmt):
    """An ``explanation`` column for rows of ``X``: :func:`explain` for the
    ``flagged`` ones (a :func:`format_explanation` string in CSV, a list of
    objects in JSON lines), empty or null for the others."""
    import pandas as pd

    cells = np.full(len(X), "" if fmt == "csv" else None, dtype=object)
    if flagged.any():
        items = explain(detector, pd.DataFrame(X[flagged], columns=features), n_features)
        # Element by element: numpy would read a list of lists as a 2-D block.
        for i, row_items in zip(np.flatnonzero(flagged), items):
            cells[i] = format_explanation(row_items) if fmt == "csv" else row_items
    return cells

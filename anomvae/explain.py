"""Why a row was flagged: each feature's share of its anomaly score.

Tables get the features that add most to a row's score, with observed and
reconstructed values; images get a heatmap of where the score comes from.
Both read :meth:`~anomvae.fitted.FittedVAE.feature_contributions`.
"""

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


def heatmap_image(pixels, contributions, image_shape, *, min_side=256, vmax=None):
    """A picture of where an image's anomaly score comes from.

    The image, enlarged (nearest neighbour) so its shorter side is at least
    ``min_side`` pixels, under a red overlay whose opacity grows with each
    pixel's contribution to the score (summed over channels; contributions
    at or below zero are transparent, ``vmax`` and above 70% opaque).

    Parameters
    ----------
    pixels : ndarray of shape (C * H * W,)
        Values in [0, 1], channels first.
    contributions : ndarray of shape (C * H * W,)
        One row of :meth:`VAEAnomalyDetector.feature_contributions`.
    image_shape : (int, int, int)
    min_side : int, default=256
    vmax : float, default=None
        Contribution (in nats) drawn at full opacity; ``None`` uses the
        image's own largest, which shows where in an image its score comes
        from but not how large it is. Pass one value for several images to
        compare them.

    Returns
    -------
    image : PIL.Image.Image, RGB
    """
    from PIL import Image

    channels, height, width = image_shape
    base = np.asarray(pixels, dtype=np.float64).reshape(image_shape)
    base = np.repeat(base, 3, axis=0) if channels == 1 else base
    heat = np.asarray(contributions, dtype=np.float64).reshape(image_shape).sum(axis=0).clip(min=0.0)
    vmax = heat.max() if vmax is None else float(vmax)
    alpha = 0.7 * np.clip(heat / vmax, 0.0, 1.0) if vmax > 0 else np.zeros_like(heat)
    red = np.array([1.0, 0.0, 0.0])[:, None, None]
    blended = (1.0 - alpha) * base + alpha * red
    picture = Image.fromarray((blended.transpose(1, 2, 0) * 255.0 + 0.5).astype(np.uint8), mode="RGB")
    factor = max(1, -(-min_side // min(height, width)))
    return picture.resize((width * factor, height * factor), Image.Resampling.NEAREST)


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

"""The report's figures, drawn with matplotlib's object API.

Each function returns a :class:`matplotlib.figure.Figure` that is not
registered with pyplot: no global state, no display, safe in threads and
servers. :func:`png_bytes` renders one with the Agg backend. matplotlib is
the ``report`` extra (``pip install 'anomvae[report]'``).
"""

import io
import math

import numpy as np

INSTALL_HINT = "pip install 'anomvae[report]'"
# Colours of the score series (colour-blind-safe pairs) and of the threshold.
COLOURS = {"training": "#7f7f7f", "calibration": "#1f77b4", "batch": "#d95f02"}
THRESHOLD_COLOUR = "#b2182b"


def require():
    """An ImportError naming the extra to install unless matplotlib is importable."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"matplotlib is not installed; {INSTALL_HINT} ({exc})") from None


def _figure(width, height):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def png_bytes(figure, dpi=100):
    """``figure`` as PNG bytes (the Agg backend, whatever pyplot's is)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return buffer.getvalue()


def training_curves(history, best_epoch=None):
    """Three panels over the epochs: the loss, the reconstruction term and
    the KL term, training solid and validation dashed (when monitored),
    the best epoch as a vertical line and the KL warm-up shaded.

    Parameters
    ----------
    history : TrainingHistory
    best_epoch : int, default=None
        The epoch whose weights the model kept.

    Returns
    -------
    Figure
    """
    figure = _figure(10, 3.0)
    axes = figure.subplots(1, 3)
    epochs = np.asarray(history.epoch, dtype=float)
    beta = np.asarray(history.beta, dtype=float)
    # The warm-up: the epochs whose KL weight is still below its final value.
    warm = epochs[beta < beta[-1]] if len(beta) else epochs[:0]
    panels = (("loss (weighted ELBO)", "train_loss", "val_loss"),
              ("reconstruction", "train_reconstruction", "val_reconstruction"),
              ("KL divergence", "train_kl", "val_kl"))
    # A line through one point draws nothing: a one-epoch run shows as dots.
    marker = "o" if len(epochs) == 1 else None
    for ax, (title, train, val) in zip(axes, panels):
        if len(warm):
            ax.axvspan(epochs[0] - 0.5, warm[-1] + 0.5, color="#fdd49e", alpha=0.5, lw=0, label="KL warm-up")
        ax.plot(epochs, getattr(history, train), color="#1f77b4", marker=marker, label="training")
        validation = np.asarray(getattr(history, val), dtype=float)
        if np.isfinite(validation).any():
            ax.plot(epochs, validation, color="#d95f02", ls="--", marker=marker, label="validation")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="#333333", ls=":", lw=1.2, label=f"best epoch ({best_epoch})")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("nats per row")
    axes[0].legend(fontsize=8)
    return figure


def score_histogram(edges, counts, threshold, *, title=None, linear_width=1.0):
    """Each series' share of its scores per bin, over shared ``edges``:
    the batch as bars, the model's scores as outlines, and the threshold as
    a vertical line, on an asinh axis (linear within ``linear_width`` nats
    of zero, logarithmic beyond) so that a heavy tail leaves the normal
    scores visible.

    Parameters
    ----------
    edges : ndarray of shape (n_bins + 1,)
    counts : dict of str to ndarray of shape (n_bins,)
        Keys among ``"training"``, ``"calibration"`` and ``"batch"``.
    threshold : float
    title : str, default=None
    linear_width : float, default=1.0

    Returns
    -------
    Figure
    """
    figure = _figure(8, 3.2)
    ax = figure.subplots()
    for name, values in counts.items():
        total = values.sum()
        if not total:
            continue
        share = values / total
        label = f"{name} ({total:,})"
        if name == "batch":
            ax.bar(edges[:-1], share, width=np.diff(edges), align="edge", color=COLOURS[name], alpha=0.6,
                   label=label)
        else:
            ax.stairs(share, edges, color=COLOURS.get(name, "black"), lw=1.5, label=label)
    ax.axvline(threshold, color=THRESHOLD_COLOUR, lw=1.5, label=f"threshold {_short(threshold)}")
    low, high = min(edges[0], threshold), max(edges[-1], threshold)
    if low <= 0 or high / low > 20:
        # A heavy tail: the asinh axis keeps the normal scores visible.
        ax.set_xscale("asinh", linear_width=linear_width)
    # The scores' range (and the threshold), not the scale's default span around zero.
    pad = 0.02 * (np.arcsinh(high / linear_width) - np.arcsinh(low / linear_width))
    ax.set_xlim(linear_width * np.sinh(np.arcsinh(low / linear_width) - pad),
                linear_width * np.sinh(np.arcsinh(high / linear_width) + pad))
    scale = "; asinh scale" if ax.get_xscale() == "asinh" else ""
    ax.set_xlabel(f"anomaly score (negative ELBO, nats{scale})")
    ax.set_ylabel("share of scores")
    if title:
        # A title names the data (a file name), which may hold "$": taken
        # as mathtext it would be garbled, or fail to render at all.
        ax.set_title(title, fontsize=10, parse_math=False)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return figure


def _short(value):
    return f"{value:.4g}" if math.isfinite(value) else str(value)

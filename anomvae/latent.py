"""The latent space, in numpy: paths between latent codes, and which latent
units a fitted network uses.

:func:`interpolation_path` is the path that
:meth:`~anomvae.fitted.FittedVAE.interpolate` decodes, between rows that
:func:`one_row` shapes; :func:`latent_usage` is the posterior-collapse
diagnosis that :meth:`~anomvae.VAEAnomalyDetector.fit` records as
``kl_per_dim_`` and ``active_units_``, and :func:`warn_if_collapsed` its
warning.
"""

import warnings
from numbers import Integral

import numpy as np

from .errors import PosteriorCollapseWarning

# A latent unit is active when the variance over the data of its posterior
# mean E[z_d|x] exceeds this (Burda et al., 2016): an inactive unit's code is
# the same for every row, so the decoder learns nothing from it.
ACTIVE_VARIANCE = 0.01
INTERPOLATIONS = ("slerp", "linear")


def latent_usage(means, kl):
    """Per-unit KL and the number of active units of a network's encoder.

    Parameters
    ----------
    means : ndarray of shape (n_samples, latent_dim)
        Posterior means E[z|x] of the rows.
    kl : ndarray of shape (n_samples, latent_dim)
        ``KL(q(z_d|x) || N(0, 1))`` of each row and unit, in nats.

    Returns
    -------
    kl_per_dim : ndarray of shape (latent_dim,)
        ``kl`` averaged over the rows; it sums to the mean KL term.
    active_units : int
        Units whose posterior mean has a variance over the rows above
        ``ACTIVE_VARIANCE``.
    """
    kl_per_dim = np.asarray(kl, dtype=np.float64).mean(axis=0)
    return kl_per_dim, int((np.var(means, axis=0) > ACTIVE_VARIANCE).sum())


# Units whose KL a message lists (info --json and the fitted attribute hold them all).
KL_SHOWN = 16


def is_collapsed(active_units, latent_dim):
    """Whether more than half of the ``latent_dim`` latent units are inactive."""
    return 2 * active_units < latent_dim


def kl_text(kl_per_dim):
    """The first :data:`KL_SHOWN` units' KL, for a message: ``"2.17, 0.0017, ..."``."""
    return ", ".join(f"{v:.3g}" for v in kl_per_dim[:KL_SHOWN]) + (", ..." if len(kl_per_dim) > KL_SHOWN else "")


def warn_if_collapsed(kl_per_dim, active_units, converged=True):
    """Issue a :class:`~anomvae.errors.PosteriorCollapseWarning`, from the
    caller's code, when more than half of the latent units are inactive.

    Not for a network that reached ``max_epochs`` before early stopping
    ended it (``converged`` False): a ``ConvergenceWarning`` already asks
    for longer training, and a network early in training has often not
    yet spread its codes, which is no collapse.
    """
    latent_dim = len(kl_per_dim)
    if not converged or not is_collapsed(active_units, latent_dim):
        return
    kl = kl_text(kl_per_dim)
    warnings.warn(
        f"posterior collapse: only {active_units} of the {latent_dim} latent units are active (an active "
        f"unit's posterior mean E[z_d|x] has a variance above {ACTIVE_VARIANCE} over the training rows); KL per "
        f"unit {kl} nats. The inactive units code every row alike, so the decoder ignores them. Scores remain "
        "ELBOs, and such a model may still rank anomalies well (labelled rows can tell: anomvae.metrics); to "
        "use the latent code, try a smaller beta, a longer kl_warmup or a smaller latent_dim.",
        PosteriorCollapseWarning, stacklevel=2,
    )


def interpolation_path(z_a, z_b, n_steps, method="slerp"):
    """``n_steps`` latent codes from ``z_a`` to ``z_b``, both included.

    ``"linear"``: evenly spaced on the segment. ``"slerp"``: spherical
    interpolation (White, 2016): the direction turns along the great circle
    between the codes' directions, ``(sin((1 - t) w) u_a + sin(t w) u_b) /
    sin(w)`` for ``w`` the angle between the unit vectors ``u_a`` and
    ``u_b``, while the length goes linearly from one code's norm to the
    other's. The norms stay between the ends' (typical of the standard
    normal prior) instead of passing near the origin, and codes of unequal
    length at a wide angle do not overshoot, as the textbook formula on the
    raw codes does. When the codes point the same or opposite ways, or one
    is zero, no single great circle joins them and the path is linear.

    Parameters
    ----------
    z_a, z_b : ndarray of shape (latent_dim,)
    n_steps : int
        At least 2.
    method : {"slerp", "linear"}, default="slerp"

    Returns
    -------
    Z : ndarray of shape (n_steps, latent_dim), dtype float64
    """
    if not isinstance(n_steps, Integral) or isinstance(n_steps, bool) or n_steps < 2:
        raise ValueError(f"n_steps must be an integer of at least 2 (both ends included), got {n_steps!r:.80}")
    if not isinstance(method, str) or method not in INTERPOLATIONS:
        raise ValueError(f"method must be one of {', '.join(map(repr, INTERPOLATIONS))}, got {method!r:.80}")
    z_a, z_b = np.asarray(z_a, dtype=np.float64), np.asarray(z_b, dtype=np.float64)
    t = np.linspace(0.0, 1.0, int(n_steps))[:, None]
    norm_a, norm_b = np.linalg.norm(z_a), np.linalg.norm(z_b)
    omega = np.arccos(np.clip(z_a @ z_b / (norm_a * norm_b), -1.0, 1.0)) if norm_a * norm_b > 0 else 0.0
    if method == "linear" or np.sin(omega) < 1e-6:
        path = (1.0 - t) * z_a + t * z_b
    else:
        direction = (np.sin((1.0 - t) * omega) * z_a / norm_a + np.sin(t * omega) * z_b / norm_b) / np.sin(omega)
        path = ((1.0 - t) * norm_a + t * norm_b) * direction
    path[0], path[-1] = z_a, z_b  # exactly, whatever the rounding
    return path


def one_row(x, name):
    """A row whose code a path starts or ends at (1-d, a Series, or 2-d with
    one row) as a one-row 2-d array or DataFrame, for validation as rows."""
    if hasattr(x, "to_frame") and getattr(x, "ndim", 2) == 1:  # a Series: its index names the features
        x = x.to_frame().T
    elif not hasattr(x, "columns"):
        x = np.asarray(x)
        x = x.reshape(1, -1) if x.ndim == 1 else x
    if getattr(x, "ndim", 0) != 2 or x.shape[0] != 1:
        raise ValueError(f"{name} must be one row, got shape {getattr(x, 'shape', None)}")
    return x

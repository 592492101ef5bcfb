"""Thresholds and p-values on anomaly scores (negative ELBO, in nats).

Numpy only (SciPy is imported for the shift test alone). The estimator sets
its threshold with these rules, and scoring turns scores into p-values and
tests a batch against the model's baseline with them.
"""

import math
from dataclasses import dataclass
from numbers import Real

import numpy as np

# A batch whose scores differ from the baseline scores with a two-sample
# Kolmogorov-Smirnov p-value below this is reported as shifted.
SHIFT_P_VALUE = 1e-3


def contamination_threshold(anomaly_scores, contamination):
    """The anomaly-score threshold that ``contamination`` sets from the
    training rows' scores: Tukey's fence (third quartile plus 1.5
    interquartile ranges) for ``"auto"``, else the ``1 - contamination``
    quantile, so that fraction of the rows is flagged."""
    if contamination == "auto":
        q1, q3 = np.percentile(anomaly_scores, [25.0, 75.0])
        return float(q3 + 1.5 * (q3 - q1))
    # The contamination-quantile of the ELBO, negated: the same bits as the
    # estimator's offset_ = percentile(score_samples, 100 * contamination).
    return -float(np.percentile(-anomaly_scores, 100.0 * contamination))


def n_exceedances(n_reference, fpr):
    """Largest ``c`` with ``(1 + c) / (n_reference + 1) <= fpr``, or -1.

    Computed with the same floating-point division that
    :func:`conformal_p_values` uses, so that ``p_value <= fpr`` and
    "flagged" agree exactly.
    """
    c = int(math.floor((n_reference + 1) * fpr)) - 1
    while c + 1 <= n_reference and (c + 2) / (n_reference + 1) <= fpr:
        c += 1
    while c >= 0 and (c + 1) / (n_reference + 1) > fpr:
        c -= 1
    return min(c, n_reference)


def check_fpr(fpr):
    """Raise ValueError unless ``fpr`` is a number in (0, 1)."""
    if isinstance(fpr, bool) or not isinstance(fpr, Real) or not 0 < fpr < 1:
        raise ValueError(f"fpr must be a number in (0, 1), got {fpr!r}")


def conformal_threshold(reference, fpr):
    """The split-conformal threshold on sorted reference anomaly scores: the
    ``k``-th smallest, ``k = ceil((n + 1) * (1 - fpr))``. A new row from the
    reference rows' distribution then exceeds it with probability at most
    ``fpr``. Raises ValueError when there are too few reference rows."""
    check_fpr(fpr)
    n = reference.size
    exceedances = n_exceedances(n, float(fpr))
    if exceedances < 0:
        needed = math.ceil(1.0 / fpr) - 1
        while 1 / (needed + 1) > fpr:
            needed += 1
        raise ValueError(f"calibrating for fpr={fpr:g} needs at least {needed} reference rows, got {n}")
    return float(reference[n - exceedances - 1])


def conformal_p_values(reference, anomaly_scores):
    """``(1 + #{reference >= score}) / (n_reference + 1)`` for each score,
    against sorted reference anomaly scores."""
    n_at_or_above = reference.size - np.searchsorted(reference, anomaly_scores, side="left")
    return (1 + n_at_or_above) / (reference.size + 1)


def subsample_sorted(values, max_size):
    """``values`` sorted, thinned to at most ``max_size`` evenly spaced order
    statistics (deterministic, so refitting gives the same subsample)."""
    values = np.sort(np.asarray(values, dtype=np.float64))
    if values.size <= max_size:
        return values
    return values[np.linspace(0, values.size - 1, max_size).round().astype(np.intp)]


@dataclass(frozen=True)
class ScoreShift:
    """A two-sample Kolmogorov-Smirnov test of a batch's anomaly scores
    against the model's baseline scores.

    Attributes
    ----------
    baseline : {"calibration", "training"}
    n_baseline, n_batch : int
    ks_statistic, ks_p_value : float
    level : float
        :data:`SHIFT_P_VALUE`.
    shifted : bool
        ``ks_p_value < level``.
    """

    baseline: str
    n_baseline: int
    n_batch: int
    ks_statistic: float
    ks_p_value: float
    level: float
    shifted: bool


def score_shift(anomaly_scores, *, reference_scores=None, training_scores=None):
    """Test whether a batch's anomaly scores come from the baseline's distribution.

    The baseline is the calibration rows' scores (``reference_scores``)
    when the model is calibrated, else its thinned training scores.
    Training scores are in-sample, so even normal new data tends to score a
    little worse than them; a calibrated baseline is the fairer comparison.

    Returns
    -------
    ScoreShift or None
        None when there is nothing to compare.
    """
    calibrated = reference_scores is not None
    baseline = reference_scores if calibrated else training_scores
    anomaly_scores = np.asarray(anomaly_scores, dtype=np.float64)
    if baseline is None or not len(baseline) or not anomaly_scores.size:
        return None
    from scipy.stats import ks_2samp

    result = ks_2samp(anomaly_scores, baseline)
    return ScoreShift(
        baseline="calibration" if calibrated else "training",
        n_baseline=int(len(baseline)),
        n_batch=int(anomaly_scores.size),
        ks_statistic=float(result.statistic),
        ks_p_value=float(result.pvalue),
        level=SHIFT_P_VALUE,
        shifted=bool(result.pvalue < SHIFT_P_VALUE),
    )

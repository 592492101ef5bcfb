"""What the network sees: scaling, variance floors and which values are usable.

Numpy only. :class:`Standardizer` is the one owner of the rules that decide
whether a value can be scored (finite, inside the likelihood's domain,
within float32's range as written and once standardised) and of the change
of units the scores are corrected by.
"""

from dataclasses import dataclass

import numpy as np

from .errors import quote

# Smallest variance (in the units the network sees, i.e. standardised
# features by default) a Gaussian likelihood may learn.  Without a floor the
# likelihood of a near-constant feature grows without bound during training.
DEFAULT_MIN_VARIANCE = 1e-3

# The network computes in float32; larger values become infinities.
FLOAT32_MAX = float(np.finfo(np.float32).max)

# Likelihoods defined for values in [0, 1] only.
UNIT_INTERVAL_LIKELIHOODS = ("bernoulli", "continuous_bernoulli")


def grid_variance_floor(X, scale):
    """Per-feature variance floor for the Gaussian likelihood, in scaled units.

    A feature recorded on a grid of step ``h`` (counts, ratings, pixel
    levels) carries no information finer than ``h``; spreading each value
    uniformly over its grid cell has variance ``h**2 / 12``, and a learned
    variance below that would reward precision the data does not have.
    ``h`` is the smallest positive gap between sorted training values.
    Continuous features have tiny gaps and keep ``DEFAULT_MIN_VARIANCE``,
    as do constant ones, which have no gap.  Every row counts (a value
    seen once still marks the grid), and one column is sorted at a time,
    so the extra memory is one column's.
    """
    X = np.asarray(X)
    step = np.zeros(X.shape[1])
    for j in range(X.shape[1]):
        gaps = np.diff(np.sort(X[:, j].astype(np.float64)))
        gaps = gaps[gaps > 0]
        if gaps.size:
            step[j] = gaps.min() / scale[j]
    return np.maximum(DEFAULT_MIN_VARIANCE, step**2 / 12.0)


def check_domain(X, likelihood):
    """Raise ValueError when ``X`` has values outside [0, 1] for a likelihood
    that needs them there (Bernoulli, continuous Bernoulli)."""
    if likelihood in UNIT_INTERVAL_LIKELIHOODS and X.size and (X.min() < 0 or X.max() > 1):
        column = int(np.flatnonzero((X < 0).any(axis=0) | (X > 1).any(axis=0))[0])
        raise ValueError(
            f"likelihood={likelihood!r} needs values in [0, 1]; "
            f"column {column} holds values in [{X[:, column].min():g}, {X[:, column].max():g}]"
        )


def check_float32_range(X, usable=None):
    """Raise ValueError naming the first value of ``X`` that float32, the
    network's precision, cannot hold (``usable`` False there; by default
    values beyond about 3.4e38): it would become an infinity and its score NaN."""
    if usable is None:
        if not X.size or max(X.max(), -X.min()) <= FLOAT32_MAX:  # no copy of X when all is well
            return
        usable = np.abs(X) <= FLOAT32_MAX
    if not usable.all():
        row, column = np.argwhere(~usable)[0]
        where = "" if abs(X[row, column]) > FLOAT32_MAX else " once standardised"
        raise ValueError(
            f"X[{row}, {column}] = {X[row, column]:g} is too large for the model: the network computes in "
            f"float32, whose range (about {FLOAT32_MAX:.1e}) it leaves{where}"
        )


@dataclass(frozen=True, eq=False)
class Standardizer:
    """Per-feature centring and scaling, and the validity rules of the values.

    Attributes
    ----------
    center, scale : ndarray of shape (n_features,)
        ``transform(X) = (X - center) / scale``.
    likelihood : str
        The network's likelihood; ``"bernoulli"`` and
        ``"continuous_bernoulli"`` need values in [0, 1].
    """

    center: np.ndarray
    scale: np.ndarray
    likelihood: str = "gaussian"

    @classmethod
    def fit(cls, X, *, standardize, likelihood):
        """The scaling of ``X``: its mean and standard deviation per feature
        when ``standardize``, else none.

        A feature counts as constant (scale 1) when its standard deviation
        is 0 or below 1e-12 times its mean's size: the test is relative to
        the feature's own size, so a feature measured in tiny units (a
        spread of 1e-13) still varies.
        """
        n_features = X.shape[1]
        if not standardize:
            return cls.identity(n_features, likelihood)
        center = X.mean(axis=0, dtype=np.float64)
        scale = X.std(axis=0, dtype=np.float64)
        varies = (scale > 0) & (scale > 1e-12 * np.abs(center))
        return cls(center, np.where(varies, scale, 1.0), likelihood)

    @classmethod
    def identity(cls, n_features, likelihood="gaussian"):
        """No scaling: the validity rules of ``likelihood`` alone."""
        return cls(np.zeros(n_features), np.ones(n_features), likelihood)

    def check(self, X):
        """Raise ValueError naming the first value of ``X`` outside the
        likelihood's domain or beyond float32's range as written."""
        check_domain(X, self.likelihood)
        check_float32_range(X)

    def transform(self, X):
        """``X`` standardised, in float32 (the network's precision); raises
        ValueError naming a value that leaves float32's range."""
        with np.errstate(over="ignore"):
            scaled = ((X - self.center) / self.scale).astype(np.float32)
        check_float32_range(X, np.isfinite(scaled))
        return scaled

    @property
    def log_jacobian(self):
        """``log |d transform / d x|`` summed over the features: what turns
        a density of the scaled values into one of the data in its units."""
        return -np.log(self.scale).sum()

    def unusable(self, X):
        """Element-wise mask of the values of ``X`` that cannot be scored."""
        with np.errstate(invalid="ignore", over="ignore"):
            magnitude = np.abs(X)
            bad = ~(magnitude <= FLOAT32_MAX)  # True for NaN too
            # Standardising can take only values this large out of range:
            # the division runs only when there are any, not on every chunk.
            limit = FLOAT32_MAX * np.min(self.scale, initial=np.inf) - np.max(np.abs(self.center), initial=0.0)
            if (magnitude > limit).any():
                bad |= ~(np.abs((X - self.center) / self.scale) <= FLOAT32_MAX)
            if self.likelihood in UNIT_INTERVAL_LIKELIHOODS:
                bad |= (X < 0) | (X > 1)
        return bad

    def unusable_rows(self, X, columns):
        """Rows of ``X`` that cannot be scored, and why.

        A row is unusable with an empty cell, NaN or infinity, a value
        outside [0, 1] for a likelihood that needs it there, or a value
        beyond float32's range (about 3.4e38) as it is or once standardised.

        Returns
        -------
        mask : ndarray of bool, shape (n_rows,)
        reasons : list of str
            One per unusable row, naming its first bad column, e.g.
            ``"empty or NaN value in column 'AC'"``.
        """
        bad = self.unusable(X)
        mask = bad.any(axis=1)
        return mask, [self._reason(X[i], int(np.argmax(bad[i])), columns) for i in np.flatnonzero(mask)]

    def _reason(self, row, j, columns):
        value, column = row[j], quote(columns[j])
        if np.isnan(value):
            return f"empty or NaN value in column {column}"
        if np.isinf(value):
            return f"infinite value in column {column}"
        if self.likelihood in UNIT_INTERVAL_LIKELIHOODS and not 0 <= value <= 1:
            return f"value {value:g} in column {column} outside [0, 1], which likelihood={self.likelihood!r} needs"
        if abs(value) > FLOAT32_MAX:
            return f"value {value:g} in column {column} beyond float32's range"
        return f"value {value:g} in column {column} beyond float32's range once standardised"

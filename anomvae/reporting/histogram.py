"""Score histograms in bounded memory, filled chunk by chunk.

A batch's range is unknown until its last chunk is read, so the bins cannot
be fixed in advance; keeping every score to bin at the end would make the
report's memory grow with the batch. :class:`ScoreHistogram` instead keeps
a fixed number of bins of a power-of-two width and, when a score falls
outside them, doubles the width (merging neighbouring bins) until it fits.
Counts stay exact; only the resolution coarsens, and only as far as the
range of the scores requires.

Bins are of equal width in ``asinh(score / LINEAR_WIDTH)``: linear within a
nat of zero, logarithmic beyond. Anomaly scores are heavy-tailed (a batch's
worst row may score a hundred times a normal one); on a linear scale one
such row would squash every normal score into a single bin.
"""

import math

import numpy as np

# Bins kept; at least half of them span the scores after any doubling.
N_BINS = 128
# Scores (nats) up to which the bins' scale is linear (matplotlib's asinh scale's linear_width).
LINEAR_WIDTH = 1.0


def transform(scores):
    """Scores on the bins' scale: ``asinh(score / LINEAR_WIDTH)``."""
    return np.arcsinh(np.asarray(scores, dtype=np.float64) / LINEAR_WIDTH)


class ScoreHistogram:
    """Counts of several series of anomaly scores (the training, calibration
    and batch scores) in shared bins ``[(first + k) * width, (first + k + 1) * width)``
    of :func:`transform`'s scale.

    Parameters
    ----------
    values : array-like of float
        Scores the first bins are sized for (the model's baseline scores
        and threshold); they are not counted.
    n_bins : int, default=128

    Attributes
    ----------
    width : float
        A power of two, on :func:`transform`'s scale.
    first : int
        The first bin's left edge in widths.
    counts : dict of str to ndarray of int64
    infinite : dict of str to int
        Per series, the scores left out for being infinite or NaN.
    """

    def __init__(self, values, n_bins=N_BINS):
        values = transform(values)
        values = values[np.isfinite(values)]
        low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
        # Half the bins for the baseline's range, so a batch somewhat above
        # it still fits without coarsening.
        self.width = 2.0 ** math.ceil(math.log2(max(high - low, 1e-6) / (n_bins // 2)))
        self.first, self.n_bins = math.floor(low / self.width), n_bins
        self.counts, self.infinite = {}, {}

    def add(self, name, scores):
        """Count ``scores`` in the series ``name``."""
        scores = transform(scores)
        finite = np.isfinite(scores)
        self.infinite[name] = self.infinite.get(name, 0) + int((~finite).sum())
        self.counts.setdefault(name, np.zeros(self.n_bins, dtype=np.int64))
        scores = scores[finite]
        if not scores.size:
            return
        while True:
            low, high = math.floor(scores.min() / self.width), math.floor(scores.max() / self.width)
            if low < self.first:
                self._coarsen(downward=True)
            elif high >= self.first + self.n_bins:
                self._coarsen(downward=False)
            else:
                break
        bins = np.floor(scores / self.width).astype(np.int64) - self.first
        self.counts[name] += np.bincount(np.clip(bins, 0, self.n_bins - 1), minlength=self.n_bins)

    def _coarsen(self, downward):
        """Double the width, keeping every bin's scores together: bin ``k``
        moves into ``(k + first % 2) // 2 + offset``. The old bins fill
        about half of the new ones: the lower half, or the upper half when
        the range must grow ``downward`` (``offset`` is then ``n_bins // 2 - 1``,
        the most that keeps the last old bin inside)."""
        shift, offset = self.first % 2, self.n_bins // 2 - 1 if downward else 0
        for name, counts in self.counts.items():
            merged = np.zeros(self.n_bins, dtype=np.int64)
            np.add.at(merged, (np.arange(self.n_bins) + shift) // 2 + offset, counts)
            self.counts[name] = merged
        self.first, self.width = (self.first - shift) // 2 - offset, self.width * 2

    @property
    def edges(self):
        """The ``n_bins + 1`` bin edges, in nats."""
        return LINEAR_WIDTH * np.sinh((self.first + np.arange(self.n_bins + 1)) * self.width)

    def used(self, max_bins=None):
        """The edges and counts trimmed to the bins from the first to the
        last that any series fills, neighbours merged so that at most
        ``max_bins`` remain (default: twice the square root of the largest
        series' count, 12 to ``n_bins``: few scores in many bins only
        show noise): ``(edges, {name: counts})``."""
        total = sum(self.counts.values(), np.zeros(self.n_bins, dtype=np.int64))
        filled = np.flatnonzero(total)
        if not filled.size:
            return self.edges[:2], {name: counts[:1] for name, counts in self.counts.items()}
        if max_bins is None:
            largest = max(int(counts.sum()) for counts in self.counts.values())
            max_bins = int(np.clip(2 * math.sqrt(largest), 12, self.n_bins))
        start, stop = filled[0], filled[-1] + 1
        step = -(-(stop - start) // max_bins)
        stop = start + step * -(-(stop - start) // step)  # whole groups; the bins past the last are empty
        edges = self.edges
        if stop > self.n_bins:
            extra = (self.first + np.arange(self.n_bins + 1, stop + 1)) * self.width
            edges = np.concatenate([edges, LINEAR_WIDTH * np.sinh(extra)])
        grouped = {name: np.pad(counts, (0, max(0, stop - self.n_bins)))[start:stop].reshape(-1, step).sum(axis=1)
                   for name, counts in self.counts.items()}
        return edges[start:stop + 1:step], grouped

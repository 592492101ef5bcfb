"""What a report shows of a batch, gathered while it is scored.

The batch goes through :func:`anomvae.scoring.score_csv` or
:func:`~anomvae.scoring.score_images`, the code behind ``anomvae score``,
so its counts, threshold and shift test are those of ``score
--summary-json``. Their results are discarded (only flagged and unscored
rows are even formatted); a :class:`ReportMonitor` keeps, in memory bounded
whatever the batch's size, what the report adds: a :class:`ScoreHistogram`
of the scores, and the features or pixels of the highest-scoring rows (and,
for images, of the lowest-scoring ones).
"""

from dataclasses import dataclass, field

import numpy as np

from ..calibration import conformal_p_values
from ..results import ScoringSummary, TopScores
from ..scoring import BatchMonitor, feature_names, score_csv, score_images
from .histogram import ScoreHistogram


@dataclass
class Findings:
    """A scored batch, as the report shows it.

    Attributes
    ----------
    name : str
        The batch's display name.
    what : {"rows", "images"}
    summary : ScoringSummary
        What ``score --summary-json`` reports for the same batch.
    histogram : ScoreHistogram
    top : list of dict
        The highest-scoring rows, highest first: ``ids`` (their id columns,
        ``row`` or ``path``), ``anomaly_score``, ``p_value`` (None for an
        uncalibrated model), ``flagged``, and ``explanation`` (tables:
        :func:`anomvae.explain.explain`'s items) or ``pixels`` and
        ``contributions`` (images).
    normal : list of dict
        Images only: the lowest-scoring images, lowest first, as ``top``.
    """

    name: str
    what: str
    summary: ScoringSummary
    histogram: ScoreHistogram
    top: list = field(default_factory=list)
    normal: list = field(default_factory=list)


class _Discard:
    """A text stream that drops what is written: the report needs the
    scorers' summary, not their results."""

    def write(self, text):
        return len(text)

    def flush(self):
        pass


class ReportMonitor(BatchMonitor):
    """:class:`~anomvae.scoring.BatchMonitor` (the summary's ``n_top`` top
    rows, its shift test) that also fills a histogram of the batch's scores
    and keeps the ids of its ``n_top`` highest-scoring rows, the values of
    the ``n_values`` highest (those explained or pictured), and those of its
    ``n_normal`` lowest-scoring rows."""

    def __init__(self, model, histogram, n_top, n_values, n_normal=0):
        super().__init__(model, n_top, shift_test=True)
        self.histogram = histogram
        self.highest, self.valued, self.lowest = TopScores(n_top), TopScores(n_values), TopScores(n_normal)

    def add(self, scores, rows, identity, values=None):
        super().add(scores, rows, identity)
        self.histogram.add("batch", scores)
        if len(scores):
            def keep(i):
                return {"ids": identity(i), "values": np.array(values[i])}
            self.highest.add(scores, rows, lambda i: {"ids": identity(i)})
            self.valued.add(scores, rows, keep)
            self.lowest.add(-np.asarray(scores), rows, keep)

    def top_rows(self):
        """The highest-scoring rows, highest first; the first ``n_values``
        with their values (both heaps see every row, so they agree)."""
        rows = self.highest.result()
        for row, valued in zip(rows, self.valued.result()):
            row["values"] = valued["values"]
        return rows


def baseline_histogram(model, threshold):
    """A histogram sized for the model's training and calibration scores
    and ``threshold``, holding them as the series ``training`` and
    ``calibration`` (when the model has them)."""
    series = {"training": getattr(model, "training_scores_", None),
              "calibration": getattr(model, "reference_scores_", None)}
    series = {name: np.asarray(values) for name, values in series.items() if values is not None and len(values)}
    histogram = ScoreHistogram(np.concatenate([*series.values(), [threshold]]))
    for name, values in series.items():
        histogram.add(name, values)
    return histogram


def gather(model, data, *, images, threshold=None, n_top=20, n_pictured=8, n_normal=4, explain_top=3, id_columns=(),
           chunk_size=None, delimiter=",", decimal=".", mark_invalid=False):
    """Score ``data`` with ``model`` as ``anomvae score`` does and collect
    the report's :class:`Findings`.

    Parameters
    ----------
    model : VAEAnomalyDetector
    data : str
        A CSV file (``"-"`` for stdin) or Parquet data; or, with ``images``,
        a folder, glob, image files or an array file.
    images : bool
    threshold : float, default=None
        ``None`` uses the model's.
    n_top, n_normal : int
        Rows kept with the highest and (images only) lowest scores.
    n_pictured : int, default=8
        Images only: of the ``n_top`` highest, those whose pixels are kept
        for the grid (tables keep the features of all ``n_top``).
    explain_top : int, default=3
        Features listed per top row (tables).
    id_columns, chunk_size, delimiter, decimal, mark_invalid
        As for :func:`~anomvae.scoring.score_csv`.
    """
    cut = model.threshold_ if threshold is None else threshold
    histogram = baseline_histogram(model, cut)
    monitor = ReportMonitor(model, histogram, n_top, min(n_top, n_pictured) if images else n_top,
                            n_normal if images else 0)
    common = dict(threshold=threshold, fmt="csv", mark_invalid=mark_invalid, only_anomalies=True, monitor=monitor)
    if images:
        summary = score_images(model, data, _Discard(), batch_size=chunk_size or 256, **common)
    else:
        summary = score_csv(model, data, _Discard(), id_columns=id_columns, chunk_size=chunk_size or 10_000,
                            delimiter=delimiter, decimal=decimal, **common)
    from ..tables import display_name

    findings = Findings(display_name(data), "images" if images else "rows", summary, histogram)
    findings.top = _described(model, monitor.top_rows(), 1.0, summary.threshold, images, explain_top)
    if images:
        findings.normal = _described(model, monitor.lowest.result(), -1.0, summary.threshold, images, 0)
    return findings


def _described(model, kept, sign, threshold, images, explain_top):
    """The kept rows of :class:`ReportMonitor` with their p-values and
    explanations (tables) or contributions (images)."""
    if not kept:
        return []
    scores = sign * np.array([row["anomaly_score"] for row in kept])
    # The first rows, kept with their values, get explained or pictured.
    values = [row["values"] for row in kept if "values" in row]
    reference = getattr(model, "reference_scores_", None)
    p_values = conformal_p_values(reference, scores) if reference is not None else [None] * len(kept)
    described = [{"ids": row["ids"], "anomaly_score": float(score), "flagged": bool(score > threshold),
                  "p_value": None if p is None else float(p)} for row, score, p in zip(kept, scores, p_values)]
    if images and values:
        values = np.stack(values)
        for row, pixels, contributions in zip(described, values, model.feature_contributions(values)):
            row.update(pixels=pixels, contributions=contributions)
    elif explain_top and values:
        import pandas as pd

        from ..explain import explain

        frame = pd.DataFrame(np.stack(values), columns=feature_names(model))
        for row, items in zip(described, explain(model, frame, explain_top)):
            row["explanation"] = items
    return described

"""Streaming scoring of tables (CSV, Parquet) and images: the work behind ``anomvae score``.

Kept in the library so that Python users can score files the same way the
command does: chunk by chunk, with bounded memory, every input row accounted
for in the output (a row that cannot be scored is named in an error, or
written unscored with the reason).
"""

import os
import re

import numpy as np
import pandas as pd

from . import images, parquet, tables
from .calibration import check_fpr, conformal_p_values, score_shift
from .errors import DataError
from .explain import HeatScale, explanation_cells, heatmap_image
from .files import folder_error, staged_folder
from .results import ResultWriter, ScoringSummary, TopScores, check_id_columns, json_value


def feature_names(model):
    """The feature names a CSV's columns are matched to, by name."""
    names = getattr(model, "feature_names_in_", None)
    if names is None:
        raise ValueError(
            "this model was fitted on an array without column names, so CSV columns cannot be "
            "matched to its features; fit it on a DataFrame or with 'anomvae fit'"
        )
    return [str(n) for n in names]


def score_csv(model, path, stream, *, id_columns=(), threshold=None, fmt="csv", chunk_size=10_000,
              delimiter=",", decimal=".", mark_invalid=False, only_anomalies=False, explain_top=0,
              summary_top=10, shift_test=True, monitor=None):
    """Score a CSV file or Parquet data chunk by chunk and write one result row per input row.

    Parameters
    ----------
    model : VAEAnomalyDetector or ScoringModel
        Fitted on a DataFrame, so that columns are matched by name.
    path : str
        CSV file, or ``"-"`` for stdin; or Parquet data (a file, folder or
        glob, see :func:`anomvae.parquet.is_parquet_source`), read by row
        group where the CSV dialect does not apply and rows are named by
        file and 0-based row index instead of line.
    stream : file object
        Where results go, as they are computed: text, or binary for Parquet.
    id_columns : sequence of str, default=()
        Columns copied to the output, each value as written (read from CSV
        as text: ``NA`` stays ``NA``, spaces are kept, an empty cell stays
        empty; from Parquet in their Parquet type);
        without any, a 1-based ``row`` number (the data row; its line in
        the file is ``row + 1``). A name of an output column
        (:data:`anomvae.results.OUTPUT_COLUMNS`) is refused.
    threshold : float, default=None
        Anomaly-score cut in nats, finite; ``None`` uses ``model.threshold_``.
    fmt : {"csv", "jsonl", "parquet"}, default="csv"
    chunk_size : int, default=10000
        Rows read and scored at a time.
    delimiter : str, default=","
    decimal : str, default="."
        Decimal mark of the numbers (``","`` for ``1,5``).
    mark_invalid : bool, default=False
        Rows that cannot be scored (see
        :meth:`~anomvae.preprocessing.Standardizer.unusable_rows`: empty,
        NaN or infinite values, values outside the likelihood's domain or
        float32's range) raise :class:`~anomvae.errors.DataError` naming
        their lines; with True they are written with an empty score and a
        ``status`` column saying why.
    only_anomalies : bool, default=False
        Write only flagged rows (and, with ``mark_invalid``, rows not scored).
    explain_top : int, default=0
        When positive, add an ``explanation`` of each flagged row: its
        ``explain_top`` largest feature contributions (see
        :func:`anomvae.explain.explain`); needs a
        :class:`~anomvae.VAEAnomalyDetector` (its ``transform``).
    summary_top : int, default=10
        How many of the highest-scoring rows the summary lists.
    shift_test : bool, default=True
        Compare the batch's scores with the model's baseline (see
        :func:`anomvae.calibration.score_shift`); False skips the test, and
        the memory of one float per row it needs.
    monitor : BatchMonitor, default=None
        What follows the scored rows (p-values, top rows, shift test)
        instead of a ``BatchMonitor(model, summary_top, shift_test)``: a
        subclass sees each chunk's rows too (as :func:`anomvae.reporting.report` does).

    Returns
    -------
    ScoringSummary

    Notes
    -----
    When the model is calibrated a ``p_value`` column follows
    ``anomaly_score``.
    """
    features = feature_names(model)
    id_columns = list(id_columns)
    check_id_columns(id_columns)
    name = tables.display_name(path)
    summary = _summary(model, threshold)
    writer = ResultWriter(stream, summary, fmt=fmt, mark_invalid=mark_invalid, only_anomalies=only_anomalies)
    standardizer = model.standardizer_
    monitor = BatchMonitor(model, summary_top, shift_test) if monitor is None else monitor
    chunks = tables.iter_table(path, columns=features + id_columns, chunk_size=chunk_size, delimiter=delimiter,
                               decimal=decimal, text_columns=id_columns)
    names = tables.RowNames(path)
    with writer:
        for chunk in chunks:
            X = tables.to_numeric(chunk, features, name=name, decimal=decimal)
            invalid, reasons = standardizer.unusable_rows(X, features)
            if invalid.any() and not mark_invalid:
                raise tables.invalid_rows_error(name, chunk.index[invalid], reasons,
                                                "fix them or pass --invalid-rows mark", names)
            scores, invalid, reasons = _scores(model, X, features, invalid, reasons, chunk.index, name, mark_invalid,
                                               names)
            valid = ~invalid
            before, after = monitor.p_values(scores, valid), {}
            if explain_top:
                flagged = valid & (scores > summary.threshold)
                after["explanation"] = explanation_cells(model, X, flagged, features, explain_top,
                                                          "csv" if fmt == "parquet" else fmt)
            ids = ({c: parquet.id_values(chunk[c], fmt) for c in id_columns} if id_columns
                   else {"row": chunk.index.to_numpy() + 1})
            why = [f"{r} ({names(row)})" for r, row in zip(reasons, chunk.index[invalid])]
            writer.write(ids, scores, valid, why, before=before, after=after)
            positions = np.flatnonzero(valid)
            rows = chunk.index.to_numpy()[positions] + 1
            monitor.add(scores[valid], rows, lambda i: (
                {c: json_value(chunk[c].iloc[positions[i]]) for c in id_columns} if id_columns
                else {"row": int(rows[i])}
            ), X[valid])
    stream.flush()
    return monitor.finish(summary)


def _summary(model, threshold):
    """The run's empty :class:`ScoringSummary`, at ``threshold`` or the model's."""
    if threshold is not None and not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    return ScoringSummary(threshold=model.threshold_ if threshold is None else float(threshold),
                          calibration_fpr=getattr(model, "calibration_fpr_", None))


class BatchMonitor:
    """What the CSV and image scorers add to the rows they write: p-values
    against the calibration scores, the summary's top rows, and the scores
    its shift test compares with the model's baseline."""

    def __init__(self, model, summary_top, shift_test):
        self.reference = getattr(model, "reference_scores_", None)
        self.training = getattr(model, "training_scores_", None)
        self.top, self.shift_test, self.scores = TopScores(summary_top), shift_test, []

    def p_values(self, scores, valid):
        """``{"p_value": column}`` (NaN where not scored) for a calibrated
        model; nothing for another."""
        if self.reference is None:
            return {}
        p_values = np.full(len(scores), np.nan)
        p_values[valid] = conformal_p_values(self.reference, scores[valid])
        return {"p_value": p_values}

    def add(self, scores, rows, identity, values=None):
        """Offer the scored rows of a batch (see :meth:`TopScores.add`);
        ``values`` holds their features (or pixels), for a subclass that
        keeps some of them."""
        if len(scores):
            self.top.add(scores, rows, identity)
            if self.shift_test:
                self.scores.append(scores)

    def finish(self, summary):
        summary.top_anomalies = self.top.result()
        if self.shift_test:
            summary.score_shift = score_shift(np.concatenate(self.scores) if self.scores else [],
                                              reference_scores=self.reference, training_scores=self.training)
        return summary


def _scores(model, X, features, invalid, reasons, rows, name, mark_invalid, names):
    """Anomaly scores of a chunk's usable rows (NaN for the others), and the
    chunk's unusable rows and reasons with any row whose score came out NaN."""
    scores = np.full(len(X), np.nan)
    valid = ~invalid
    if not valid.any():
        return scores, invalid, reasons
    scores[valid] = -model.score_samples(pd.DataFrame(X[valid], columns=features))
    unscorable = valid & np.isnan(scores)
    if not unscorable.any():
        return scores, invalid, reasons
    # Unusable values are caught before scoring; this catches what is left:
    # float32 arithmetic inside the network that overflows into NaN.
    problem = "its anomaly score is NaN: a value too large for the model's float32 network"
    if not mark_invalid:
        raise DataError(f"{name}: {int(unscorable.sum())} row(s) cannot be scored, {names.text(rows[unscorable])}: "
                        f"{problem}; fix them or pass --invalid-rows mark")
    reason_of = dict(zip(np.flatnonzero(invalid), reasons))
    reason_of.update((i, problem) for i in np.flatnonzero(unscorable))
    invalid = invalid | unscorable
    return scores, invalid, [reason_of[i] for i in np.flatnonzero(invalid)]


def score_images(model, source, stream, *, threshold=None, fmt="csv", batch_size=256, mark_invalid=False,
                 only_anomalies=False, heatmaps=None, heatmap_scale="model", summary_top=10, shift_test=True,
                 monitor=None):
    """Score images batch by batch and write one result row per image.

    Parameters
    ----------
    model : VAEAnomalyDetector or ScoringModel
        Fitted with ``architecture="conv"``; its ``image_shape_`` sets the
        size and colour mode images are read at (see
        :func:`anomvae.images.iter_images`).
    source : str or list of str
        Folder, glob pattern, image file(s) or ``.npy``/``.npz`` array.
    stream : text file object
    threshold : float, default=None
        Anomaly-score cut in nats, finite; ``None`` uses ``model.threshold_``.
    fmt : {"csv", "jsonl"}, default="csv"
    batch_size : int, default=256
        Images read and scored at a time.
    mark_invalid : bool, default=False
        An unreadable or truncated image raises
        :class:`~anomvae.errors.DataError` naming it; with True it is written
        with an empty score and a ``status`` column saying why.
    only_anomalies : bool, default=False
        Write only flagged images (and images not scored), and heatmaps of
        the flagged ones only.
    heatmaps : str, default=None
        Folder to write, per image written to the output and scored, a PNG
        of its per-pixel contributions over the image with its score, flag
        and a colour legend (:func:`anomvae.explain.heatmap_image`), named
        by :func:`heatmap_name` so that the files sort as the output rows.
        They appear only when every image was scored.
    heatmap_scale : {"model", "image"}, default="model"
        One colour scale for every image, from the model's baseline scores
        (:meth:`anomvae.explain.HeatScale.for_model`), or each image's own.
    summary_top : int, default=10
        How many of the highest-scoring images the summary lists, by path.
    shift_test : bool, default=True
        As for :func:`score_csv`.
    monitor : BatchMonitor, default=None
        As for :func:`score_csv`; it sees each batch's scored pixels.

    Returns
    -------
    ScoringSummary
        Counting images as rows.

    Notes
    -----
    When the model is calibrated a ``p_value`` column follows
    ``anomaly_score``, as for :func:`score_csv`.
    """
    shape = _image_shape(model)
    if heatmap_scale not in ("model", "image"):
        raise ValueError(f"heatmap_scale must be 'model' or 'image', got {heatmap_scale!r}")
    summary = _summary(model, threshold)
    writer = ResultWriter(stream, summary, fmt=fmt, mark_invalid=mark_invalid, only_anomalies=only_anomalies)
    monitor = BatchMonitor(model, summary_top, shift_test) if monitor is None else monitor
    scale = HeatScale.for_model(model) if heatmap_scale == "model" else None
    batches = images.iter_images(source, size=shape[1:], grayscale=shape[0] == 1, batch_size=batch_size,
                                 skip_unreadable=mark_invalid)
    with staged_folder(heatmaps, "heatmaps") as staging, writer:
        for paths, pixels, problems in batches:
            valid = np.array([p is None for p in problems])
            scores = np.full(len(paths), np.nan)
            if valid.any():
                scores[valid] = -model.score_samples(pixels[valid])
            positions = writer.write({"path": paths}, scores, valid, [p for p in problems if p is not None],
                                     before=monitor.p_values(scores, valid))
            scored = np.flatnonzero(valid)
            rows = summary.rows - len(paths) + scored + 1
            monitor.add(scores[scored], rows, lambda i: {"path": paths[scored[i]]}, pixels[scored])
            drawn = valid & (positions > 0)
            if staging is not None and drawn.any():
                _draw_heatmaps(model, paths, pixels, scores, drawn, positions, scale, summary.threshold, staging,
                               heatmaps)
    stream.flush()
    return monitor.finish(summary)


def _image_shape(model):
    shape = getattr(model, "image_shape_", None)
    if shape is None:
        raise ValueError("this model was not trained on images; score a CSV file with it")
    return shape


def heatmap_name(position, path):
    """The file name of an image's heatmap: ``NNNNNN-STEM.png``, its
    1-based position in the output, zero-padded to six digits, and its file
    name without the extension (``STEM-i`` for image ``i`` of an array
    file), so that names sort as the output rows (up to 999,999 rows)."""
    name = os.path.basename(path)
    row = re.fullmatch(r"(.+)\[(\d+)\]", name)
    if row and row[1].lower().endswith(images.ARRAY_EXTENSIONS):
        name = f"{os.path.splitext(row[1])[0]}-{row[2]}"
    return f"{position:06d}-{os.path.splitext(name)[0]}.png"


def _draw_heatmaps(model, paths, pixels, scores, drawn, positions, scale, threshold, folder, target):
    rows = np.flatnonzero(drawn)
    contributions = model.feature_contributions(pixels[rows])
    for i, contribution in zip(rows, contributions):
        picture = heatmap_image(pixels[i], contribution, model.image_shape_, scale=scale, score=scores[i],
                                threshold=threshold)
        try:
            picture.save(os.path.join(folder, heatmap_name(positions[i], paths[i])))
        except OSError as exc:
            raise folder_error(target, "heatmaps", exc) from None


def calibrate_images(model, source, *, fpr=0.01, batch_size=256, skip_unreadable=False):
    """Calibrate an image model on images known to be normal.

    The images are read exactly as :func:`score_images` reads them (the
    model's size and colour mode) and scored ``batch_size`` at a time, so a
    large reference folder never sits in memory; the model is then
    calibrated on their scores as :meth:`~anomvae.VAEAnomalyDetector.calibrate`
    calibrates on rows.

    Parameters
    ----------
    model : VAEAnomalyDetector or ScoringModel
        Fitted on images; calibrated in place.
    source : str or list of str
        Folder, glob pattern, image file(s) or ``.npy``/``.npz`` array.
    fpr : float, default=0.01
    batch_size : int, default=256
    skip_unreadable : bool, default=False
        An unreadable or truncated image raises
        :class:`~anomvae.errors.DataError` naming it; with True it is left
        out and listed in the result.

    Returns
    -------
    n_images : int
        Images calibrated on.
    skipped : list of (str, str)
        The path of each image left out, and why.
    """
    shape = _image_shape(model)
    check_fpr(fpr)
    scores, skipped = [], []
    for paths, pixels, problems in images.iter_images(source, size=shape[1:], grayscale=shape[0] == 1,
                                                      batch_size=batch_size, skip_unreadable=skip_unreadable):
        valid = np.array([p is None for p in problems])
        skipped += [(path, problem) for path, problem in zip(paths, problems) if problem is not None]
        if valid.any():
            scores.append(-model.score_samples(pixels[valid]))
    scores = np.concatenate(scores) if scores else np.empty(0)
    if not len(scores):
        raise DataError(f"{source}: no image could be read ({len(skipped)} skipped); nothing to calibrate on")
    model._calibrate_on_scores(scores, fpr)
    return len(scores), skipped

"""Streaming scoring of CSV files and images: the work behind ``anomvae score``.

Kept in the library so that Python users can score files the same way the
command does: chunk by chunk, with bounded memory, every input row accounted
for in the output (a row that cannot be scored is named in an error, or
written unscored with the reason).
"""

import os

import numpy as np
import pandas as pd

from . import images, tables
from .calibration import conformal_p_values, score_shift
from .errors import DataError
from .explain import explanation_cells, heatmap_image
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
              summary_top=10, shift_test=True):
    """Score a CSV file chunk by chunk and write one result row per input row.

    Parameters
    ----------
    model : VAEAnomalyDetector or ScoringModel
        Fitted on a DataFrame, so that columns are matched by name.
    path : str
        CSV file, or ``"-"`` for stdin.
    stream : text file object
        Where results go, as they are computed.
    id_columns : sequence of str, default=()
        Columns copied to the output, each value as written (read as text:
        ``NA`` stays ``NA``, spaces are kept, an empty cell stays empty);
        without any, a 1-based ``row`` number (the data row; its line in
        the file is ``row + 1``). A name of an output column
        (:data:`anomvae.results.OUTPUT_COLUMNS`) is refused.
    threshold : float, default=None
        Anomaly-score cut in nats, finite; ``None`` uses ``model.threshold_``.
    fmt : {"csv", "jsonl"}, default="csv"
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
    if threshold is not None and not np.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    name = tables.display_name(path)
    calibrated = getattr(model, "reference_scores_", None) is not None
    summary = ScoringSummary(threshold=model.threshold_ if threshold is None else float(threshold),
                             calibration_fpr=getattr(model, "calibration_fpr_", None))
    writer = ResultWriter(stream, summary, fmt=fmt, mark_invalid=mark_invalid, only_anomalies=only_anomalies)
    standardizer = model.standardizer_
    top, batch_scores = TopScores(summary_top), []
    chunks = tables.iter_csv(path, columns=features + id_columns, chunk_size=chunk_size, delimiter=delimiter,
                             decimal=decimal, text_columns=id_columns)
    for chunk in chunks:
        X = tables.to_numeric(chunk, features, name=name, decimal=decimal)
        invalid, reasons = standardizer.unusable_rows(X, features)
        if invalid.any() and not mark_invalid:
            raise tables.invalid_rows_error(name, chunk.index[invalid], reasons, "fix them or pass --invalid-rows mark")
        scores, invalid, reasons = _scores(model, X, features, invalid, reasons, chunk.index, name, mark_invalid)
        valid = ~invalid
        before, after = {}, {}
        if calibrated:
            p_values = np.full(len(X), np.nan)
            p_values[valid] = conformal_p_values(model.reference_scores_, scores[valid])
            before["p_value"] = p_values
        if explain_top:
            flagged = valid & (scores > summary.threshold)
            after["explanation"] = explanation_cells(model, X, flagged, features, explain_top, fmt)
        ids = {c: chunk[c].to_numpy() for c in id_columns} if id_columns else {"row": chunk.index.to_numpy() + 1}
        why = [f"{r} (line {tables.line_number(row)})" for r, row in zip(reasons, chunk.index[invalid])]
        writer.write(ids, scores, valid, why, before=before, after=after)
        if valid.any():
            positions = np.flatnonzero(valid)
            rows = chunk.index.to_numpy()[positions] + 1
            top.add(scores[valid], rows, lambda i: (
                {c: json_value(chunk[c].iloc[positions[i]]) for c in id_columns} if id_columns
                else {"row": int(rows[i])}
            ))
            if shift_test:
                batch_scores.append(scores[valid])
    stream.flush()
    summary.top_anomalies = top.result()
    if shift_test:
        summary.score_shift = score_shift(
            np.concatenate(batch_scores) if batch_scores else [],
            reference_scores=getattr(model, "reference_scores_", None),
            training_scores=getattr(model, "training_scores_", None),
        )
    return summary


def _scores(model, X, features, invalid, reasons, rows, name, mark_invalid):
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
        lines = [tables.line_number(row) for row in rows[unscorable]]
        raise DataError(
            f"{name}: {len(lines)} row(s) cannot be scored, line(s) "
            f"{', '.join(map(str, lines[:10]))}{' ...' if len(lines) > 10 else ''}: {problem}; "
            "fix them or pass --invalid-rows mark"
        )
    reason_of = dict(zip(np.flatnonzero(invalid), reasons))
    reason_of.update((i, problem) for i in np.flatnonzero(unscorable))
    invalid = invalid | unscorable
    return scores, invalid, [reason_of[i] for i in np.flatnonzero(invalid)]


def score_images(model, source, stream, *, threshold=None, fmt="csv", batch_size=256, mark_invalid=False,
                 only_anomalies=False, heatmaps=None):
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
        Anomaly-score cut in nats; ``None`` uses ``model.threshold_``.
    fmt : {"csv", "jsonl"}, default="csv"
    batch_size : int, default=256
        Images read and scored at a time.
    mark_invalid : bool, default=False
        An unreadable or truncated image raises
        :class:`~anomvae.errors.DataError` naming it; with True it is written
        with an empty score and a ``status`` column saying why.
    only_anomalies : bool, default=False
    heatmaps : str, default=None
        Folder to write, per scored image, a PNG of its per-pixel
        contributions over the image (:func:`anomvae.explain.heatmap_image`),
        named ``NNNNNN_STEM.png`` after its position in the output and its
        name. They appear only when every image was scored.

    Returns
    -------
    ScoringSummary
        Counting images as rows.
    """
    shape = getattr(model, "image_shape_", None)
    if shape is None:
        raise ValueError("this model was not trained on images; score a CSV file with it")
    summary = ScoringSummary(threshold=model.threshold_ if threshold is None else float(threshold))
    writer = ResultWriter(stream, summary, fmt=fmt, mark_invalid=mark_invalid, only_anomalies=only_anomalies)
    batches = images.iter_images(source, size=shape[1:], grayscale=shape[0] == 1, batch_size=batch_size,
                                 skip_unreadable=mark_invalid)
    with staged_folder(heatmaps, "heatmaps") as staging:
        for paths, pixels, problems in batches:
            valid = np.array([p is None for p in problems])
            scores = np.full(len(paths), np.nan)
            if valid.any():
                scores[valid] = -model.score_samples(pixels[valid])
            if staging is not None and valid.any():
                _draw_heatmaps(model, paths, pixels, valid, staging, summary.rows, heatmaps)
            writer.write({"path": paths}, scores, valid, [p for p in problems if p is not None])
        stream.flush()
    return summary


def _draw_heatmaps(model, paths, pixels, valid, folder, n_before, target):
    contributions = model.feature_contributions(pixels[valid])
    for row, i in enumerate(np.flatnonzero(valid)):
        stem = os.path.splitext(os.path.basename(paths[i]))[0]
        picture = heatmap_image(pixels[i], contributions[row], model.image_shape_)
        try:
            picture.save(os.path.join(folder, f"{n_before + i + 1:06d}_{stem}.png"))
        except OSError as exc:
            raise folder_error(target, "heatmaps", exc) from None

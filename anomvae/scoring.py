"""Streaming scoring of CSV files and images: the work behind ``anomvae score``.

Kept in the library so that Python users can score files the same way the
command does: chunk by chunk, with bounded memory, every input row accounted
for in the output.
"""

import contextlib
import re
import heapq

import numpy as np
import pandas as pd

from . import data as readers

# A batch whose scores differ from the baseline scores with a two-sample
# Kolmogorov-Smirnov p-value below this is reported as shifted.
SHIFT_P_VALUE = 1e-3


def _feature_names(detector):
    names = getattr(detector, "feature_names_in_", None)
    if names is None:
        raise ValueError(
            "this model was fitted on an array without column names, so CSV columns cannot be "
            "matched to its features; fit it on a DataFrame or with 'anomvae fit'"
        )
    return [str(n) for n in names]


_NEEDS_QUOTES = re.compile(r'[,"\r\n]')


def _quote(text):
    return '"' + text.replace('"', '""') + '"' if _NEEDS_QUOTES.search(text) else text


def _csv_cells(values):
    """One column as CSV text cells: floats at full precision, missing as empty."""
    if values.dtype.kind == "f":
        missing = np.isnan(values)
        cells = [repr(v) for v in values.tolist()]
        for i in np.flatnonzero(missing):
            cells[i] = ""
        return cells
    if values.dtype.kind in "iub":
        return values.astype(str).tolist()
    cells = ["" if v is None or v != v else str(v) for v in values.tolist()]
    # Columns such as is_anomaly hold a few distinct values: check those
    # for characters that need quoting instead of every cell.
    if any(_NEEDS_QUOTES.search(text) for text in set(cells)):
        cells = [_quote(text) for text in cells]
    return cells


def _write(frame, stream, fmt, header):
    if fmt == "csv":
        # Formatting the few output columns by hand is several times faster
        # than DataFrame.to_csv, which matters when scoring millions of rows.
        if header:
            stream.write(",".join(_quote(str(c)) for c in frame.columns) + "\n")
        if len(frame):
            columns = [_csv_cells(frame[c].to_numpy()) for c in frame.columns]
            stream.write("\n".join(map(",".join, zip(*columns))) + "\n")
    elif len(frame):
        text = frame.to_json(orient="records", lines=True, double_precision=15)
        stream.write(text if text.endswith("\n") else text + "\n")


def _emit(ids, scores, valid, reasons, stream, summary, *, fmt, header, mark_invalid, only_anomalies,
          before=None, after=None):
    """Write one batch of results and add it to ``summary``.

    ``ids`` maps output columns to per-row values; ``scores`` holds the
    anomaly scores (NaN where ``valid`` is False); ``reasons`` says why, one
    per row not scored, in order. ``before`` and ``after`` hold extra
    columns written before ``is_anomaly`` and after everything else.
    """
    invalid = ~valid
    flagged = valid & (scores > summary["threshold"])
    out = pd.DataFrame(ids)
    out["anomaly_score"] = scores
    for column, values in (before or {}).items():
        out[column] = values
    if fmt == "csv":
        out["is_anomaly"] = np.where(invalid, "", np.where(flagged, "true", "false"))
    else:
        out["is_anomaly"] = pd.Series(flagged, dtype=object).where(valid, None).to_numpy()
    if mark_invalid:
        status = np.full(len(out), "scored", dtype=object)
        status[invalid] = [f"not scored: {r}" for r in reasons]
        out["status"] = status
    for column, values in (after or {}).items():
        out[column] = values
    if only_anomalies:
        out = out[flagged | invalid]
    _write(out, stream, fmt, header)

    summary["rows"] += len(scores)
    summary["rows_scored"] += int(valid.sum())
    summary["rows_not_scored"] += int(invalid.sum())
    summary["anomalies"] += int(flagged.sum())
    if valid.any():
        top = float(np.max(scores[valid]))
        summary["max_score"] = top if summary["max_score"] is None else max(summary["max_score"], top)


def _new_summary(threshold):
    return {"rows": 0, "rows_scored": 0, "rows_not_scored": 0, "anomalies": 0,
            "threshold": threshold, "max_score": None}

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


def score_shift(detector, anomaly_scores):
    """Test whether a batch's anomaly scores come from the baseline's distribution.

    The baseline is the calibration rows' scores when the detector is
    calibrated, else the (thinned) training scores. Training scores are
    in-sample, so even normal new data tends to score a little worse than
    them; a calibrated baseline is the fairer comparison.

    Returns
    -------
    shift : dict or None
        ``baseline`` ("calibration" or "training"), ``n_baseline``,
        ``n_batch``, ``ks_statistic``, ``ks_p_value``, ``level``
        (:data:`SHIFT_P_VALUE`) and ``shifted`` (p-value below the level);
        None when there is nothing to compare.
    """
    calibrated = getattr(detector, "reference_scores_", None) is not None
    baseline = detector.reference_scores_ if calibrated else getattr(detector, "training_scores_", None)
    anomaly_scores = np.asarray(anomaly_scores, dtype=np.float64)
    if baseline is None or not len(baseline) or not anomaly_scores.size:
        return None
    from scipy.stats import ks_2samp

    result = ks_2samp(anomaly_scores, baseline)
    return {
        "baseline": "calibration" if calibrated else "training",
        "n_baseline": int(len(baseline)),
        "n_batch": int(anomaly_scores.size),
        "ks_statistic": float(result.statistic),
        "ks_p_value": float(result.pvalue),
        "level": SHIFT_P_VALUE,
        "shifted": bool(result.pvalue < SHIFT_P_VALUE),
    }


class _TopScores:
    """The ``size`` highest scores seen, with their row identities, in
    bounded memory."""

    def __init__(self, size):
        self.size, self._heap = size, []

    def add(self, scores, rows, identity):
        """Offer rows with their ``scores`` and ``rows`` numbers;
        ``identity(i)`` builds the dict naming the ``i``-th row, asked only
        for rows that enter the top."""
        if not self.size:
            return
        scores = np.asarray(scores, dtype=np.float64)
        candidates = np.flatnonzero(~np.isnan(scores))
        if len(candidates) > self.size:
            # Only a chunk's own top rows can enter; ties at the cut are
            # kept so the earlier row still wins among equal scores.
            kept = scores[candidates]
            cut = np.partition(kept, len(kept) - self.size)[len(kept) - self.size]
            candidates = candidates[kept >= cut]
        for i in candidates:
            # Ties keep the earlier row: a lower row number ranks higher.
            key = (float(scores[i]), -int(rows[i]))
            if len(self._heap) < self.size:
                heapq.heappush(self._heap, (*key, identity(i)))
            elif key > self._heap[0][:2]:
                heapq.heapreplace(self._heap, (*key, identity(i)))

    def result(self):
        ranked = sorted(self._heap, key=lambda item: item[:2], reverse=True)
        return [{**identity, "anomaly_score": score} for score, _, identity in ranked]


def read_reference_csv(detector, path, *, delimiter=",", skip_invalid=False, chunk_size=10_000):
    """Read the detector's feature columns (by name) from a CSV file.

    Returns
    -------
    X : DataFrame
        The rows to calibrate on.
    skipped_lines : list of int
        Lines left out for empty, NaN or infinite values (only with
        ``skip_invalid``; otherwise such rows raise
        :class:`~anomvae.data.DataError`).
    """
    features = _feature_names(detector)
    name = readers.display_name(path)
    blocks, skipped = [], []
    for chunk in readers.iter_csv(path, columns=features, chunk_size=chunk_size, delimiter=delimiter):
        X = readers.to_numeric(chunk, features, name=name)
        invalid, reasons = readers.invalid_rows(X, chunk, features, center=detector.center_, scale=detector.scale_)
        if invalid.any():
            if not skip_invalid:
                raise readers.invalid_rows_error(name, chunk, invalid, reasons,
                                                 "fix them or pass --invalid-rows skip")
            skipped += [int(row) + 2 for row in chunk.index[invalid]]
        blocks.append(X[~invalid])
    return pd.DataFrame(np.concatenate(blocks), columns=features), skipped


def score_csv(detector, path, stream, *, id_columns=(), threshold=None, fmt="csv", chunk_size=10_000,
              delimiter=",", mark_invalid=False, only_anomalies=False, explain_top=0, summary_top=10,
              shift_test=True):
    """Score a CSV file chunk by chunk and write one result row per input row.

    Parameters
    ----------
    detector : VAEAnomalyDetector
        Fitted on a DataFrame, so that columns are matched by name.
    path : str
        CSV file, or ``"-"`` for stdin.
    stream : text file object
        Where results go, as they are computed.
    id_columns : sequence of str, default=()
        Columns copied to the output; without any, a 1-based ``row`` number
        (the data row; its line in the file is ``row + 1``).
    threshold : float, default=None
        Anomaly-score cut in nats; ``None`` uses ``detector.threshold_``.
    fmt : {"csv", "jsonl"}, default="csv"
    chunk_size : int, default=10000
        Rows read and scored at a time.
    delimiter : str, default=","
    mark_invalid : bool, default=False
        Rows with empty, NaN or infinite feature values raise
        :class:`~anomvae.data.DataError` naming their lines; with True they
        are written with an empty score and a ``status`` column saying why.
    only_anomalies : bool, default=False
        Write only flagged rows (and, with ``mark_invalid``, rows not scored).
    explain_top : int, default=0
        When positive, add an ``explanation`` of each flagged row: its
        ``explain_top`` largest feature contributions (see :func:`explain`),
        a list of objects in JSONL, a :func:`format_explanation` string in
        CSV; empty (null) for other rows.
    summary_top : int, default=10
        How many of the highest-scoring rows the summary lists.
    shift_test : bool, default=True
        Compare the batch's scores with the model's baseline (see
        :func:`score_shift`); False skips the test, and the memory of one
        float per row it needs, and leaves ``score_shift`` None.

    Returns
    -------
    summary : dict
        ``rows``, ``rows_scored``, ``rows_not_scored``, ``anomalies`` (rows
        flagged), ``threshold``, ``max_score``, ``calibration_fpr``,
        ``top_anomalies`` (up to ``summary_top`` dicts with the id columns
        or ``row``, and ``anomaly_score``, highest first) and
        ``score_shift`` (see :func:`score_shift`).

    Notes
    -----
    When the detector is calibrated a ``p_value`` column follows
    ``anomaly_score`` (see :meth:`~anomvae.VAEAnomalyDetector.p_values`).
    Memory stays bounded by ``chunk_size`` except for one float per scored
    row, kept for the shift test when ``shift_test`` is True.
    """
    features = _feature_names(detector)
    id_columns = list(id_columns)
    threshold = detector.threshold_ if threshold is None else float(threshold)
    name = readers.display_name(path)
    calibrated = getattr(detector, "reference_scores_", None) is not None
    summary = _new_summary(threshold)
    summary["calibration_fpr"] = getattr(detector, "calibration_fpr_", None)
    top = _TopScores(summary_top)
    batch_scores = []
    header = True
    chunks = readers.iter_csv(
        path, columns=features + id_columns, chunk_size=chunk_size, delimiter=delimiter,
        dtype={c: str for c in id_columns},
    )
    for chunk in chunks:
        X = readers.to_numeric(chunk, features, name=name)
        invalid, reasons = readers.invalid_rows(X, chunk, features, center=detector.center_, scale=detector.scale_)
        if invalid.any() and not mark_invalid:
            raise readers.invalid_rows_error(name, chunk, invalid, reasons, "fix them or pass --invalid-rows mark")
        scores = np.full(len(X), np.nan)
        valid = ~invalid
        if valid.any():
            scores[valid] = -detector.score_samples(pd.DataFrame(X[valid], columns=features))
            unscorable = valid & np.isnan(scores)
            if unscorable.any():
                # Values beyond float32's range are invalid rows already;
                # this catches what is left: float32 arithmetic inside the
                # network that overflows into NaN for extreme values.
                problem = "its anomaly score is NaN: a value too large for the model's float32 network"
                if not mark_invalid:
                    lines = chunk.index[unscorable] + 2
                    raise readers.DataError(
                        f"{name}: {len(lines)} row(s) cannot be scored, line(s) "
                        f"{', '.join(map(str, lines[:10]))}{' ...' if len(lines) > 10 else ''}: {problem}; "
                        "fix them or pass --invalid-rows mark"
                    )
                reason_of = dict(zip(np.flatnonzero(invalid), reasons))
                reason_of.update((i, problem) for i in np.flatnonzero(unscorable))
                invalid = invalid | unscorable
                valid = ~invalid
                reasons = [reason_of[i] for i in np.flatnonzero(invalid)]
        flagged = valid & (scores > threshold)
        before, after = {}, {}
        if calibrated:
            p_values = np.full(len(X), np.nan)
            p_values[valid] = detector._p_values_of_scores(scores[valid])
            before["p_value"] = p_values
        if explain_top:
            after["explanation"] = _explanations(detector, X, flagged, features, explain_top, fmt)
        ids = ({c: chunk[c].to_numpy() for c in id_columns} if id_columns else
               {"row": chunk.index.to_numpy() + 1})
        why = [f"{r} (line {row + 2})" for r, row in zip(reasons, chunk.index[invalid])]
        _emit(ids, scores, valid, why, stream, summary, fmt=fmt, header=header, mark_invalid=mark_invalid,
              only_anomalies=only_anomalies, before=before, after=after)
        header = False
        if valid.any():
            positions = np.flatnonzero(valid)
            rows = chunk.index.to_numpy()[positions] + 1
            top.add(scores[valid], rows, lambda i: (
                {c: _json_value(chunk[c].iloc[positions[i]]) for c in id_columns} if id_columns
                else {"row": int(rows[i])}
            ))
            if shift_test:
                batch_scores.append(scores[valid])
    stream.flush()
    summary["top_anomalies"] = top.result()
    summary["score_shift"] = (
        score_shift(detector, np.concatenate(batch_scores) if batch_scores else []) if shift_test else None
    )
    return summary


def _json_value(value):
    return None if pd.isna(value) else value


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


def score_images(detector, source, stream, *, threshold=None, fmt="csv", batch_size=256, mark_invalid=False,
                 only_anomalies=False, heatmaps=None):
    """Score images batch by batch and write one result row per image.

    Parameters
    ----------
    detector : VAEAnomalyDetector
        Fitted with ``architecture="conv"``; its ``image_shape_`` sets the
        size and colour mode images are read at (see
        :func:`anomvae.data.iter_images`).
    source : str or list of str
        Folder, glob pattern, image file(s) or ``.npy``/``.npz`` array.
    stream : text file object
    threshold : float, default=None
        Anomaly-score cut in nats; ``None`` uses ``detector.threshold_``.
    fmt : {"csv", "jsonl"}, default="csv"
    batch_size : int, default=256
        Images read and scored at a time.
    mark_invalid : bool, default=False
        An unreadable or truncated image raises
        :class:`~anomvae.data.DataError` naming it; with True it is written
        with an empty score and a ``status`` column saying why.
    only_anomalies : bool, default=False
    heatmaps : str, default=None
        Folder to write, per scored image, a PNG of its per-pixel
        contributions over the image (:func:`heatmap_image`), named
        ``NNNNNN_STEM.png`` after its position in the output and its name.

    Returns
    -------
    summary : dict
        As :func:`score_csv`'s, counting images as rows.
    """
    import os

    shape = getattr(detector, "image_shape_", None)
    if shape is None:
        raise ValueError("this model was not trained on images; score a CSV file with it")
    threshold = detector.threshold_ if threshold is None else float(threshold)
    summary = _new_summary(threshold)
    header = True
    batches = readers.iter_images(source, size=shape[1:], grayscale=shape[0] == 1, batch_size=batch_size,
                                  skip_unreadable=mark_invalid)
    with _staged_folder(heatmaps) as staging:
        for paths, pixels, problems in batches:
            valid = np.array([p is None for p in problems])
            scores = np.full(len(paths), np.nan)
            if valid.any():
                scores[valid] = -detector.score_samples(pixels[valid])
            if staging is not None and valid.any():
                contributions = detector.feature_contributions(pixels[valid])
                for row, i in enumerate(np.flatnonzero(valid)):
                    stem = os.path.splitext(os.path.basename(paths[i]))[0]
                    number = summary["rows"] + i + 1
                    picture = heatmap_image(pixels[i], contributions[row], shape)
                    try:
                        picture.save(os.path.join(staging, f"{number:06d}_{stem}.png"))
                    except OSError as exc:
                        raise _heatmaps_error(heatmaps, exc) from None
            _emit({"path": paths}, scores, valid, [p for p in problems if p is not None], stream, summary,
                  fmt=fmt, header=header, mark_invalid=mark_invalid, only_anomalies=only_anomalies)
            header = False
        stream.flush()
    return summary


def _heatmaps_error(folder, exc):
    import os

    return readers.DataError(f"cannot write heatmaps to {os.path.abspath(folder)}: {exc.strerror or exc}")


@contextlib.contextmanager
def _staged_folder(target):
    """A hidden temporary folder inside ``target`` (created if need be) whose
    files move up into ``target`` only when the block succeeds; on any error
    it is removed, and so is ``target`` if this created it, so a failed
    command adds no file. Inside ``target``, the move never crosses file
    systems and needs no more rights than writing there. None gives None."""
    import os
    import shutil
    import tempfile

    if target is None:
        yield None
        return
    target = os.path.abspath(target)
    created = not os.path.isdir(target)
    try:
        os.makedirs(target, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".anomvae-", dir=target)
    except OSError as exc:
        raise _heatmaps_error(target, exc) from None
    succeeded = False
    try:
        yield staging
        try:
            for name in sorted(os.listdir(staging)):
                os.replace(os.path.join(staging, name), os.path.join(target, name))
        except OSError as exc:
            raise _heatmaps_error(target, exc) from None
        succeeded = True
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not succeeded:
            with contextlib.suppress(OSError):
                os.rmdir(target)  # only if empty


def _explanations(detector, X, flagged, features, n_features, fmt):
    cells = np.full(len(X), "" if fmt == "csv" else None, dtype=object)
    if flagged.any():
        items = explain(detector, pd.DataFrame(X[flagged], columns=features), n_features)
        # Element by element: numpy would read a list of lists as a 2-D block.
        for i, row_items in zip(np.flatnonzero(flagged), items):
            cells[i] = format_explanation(row_items) if fmt == "csv" else row_items
    return cells

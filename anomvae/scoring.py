"""Streaming scoring of CSV files and images: the work behind ``anomvae score``.

Kept in the library so that Python users can score files the same way the
command does: chunk by chunk, with bounded memory, every input row accounted
for in the output.
"""

import queue
import re
import threading

import numpy as np
import pandas as pd

from . import data as readers


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
    return ["" if v is None or v != v else _quote(str(v)) for v in values.tolist()]


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


def prefetch(iterable, depth=2):
    """Iterate ``iterable`` in a background thread, ``depth`` items ahead.

    Parsing the next CSV chunk (pandas' parser releases the GIL) then
    overlaps with scoring the current one (so does torch). An exception in
    the producer is re-raised in the consumer; if the consumer stops early,
    the producer is told to stop and the thread ends.
    """
    items = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce():
        try:
            for item in iterable:
                while not stop.is_set():
                    try:
                        items.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put((done, None))
        except BaseException as exc:  # handed to the consumer
            items.put((done, exc))

    thread = threading.Thread(target=produce, name="anomvae-reader", daemon=True)
    thread.start()
    try:
        while True:
            item, error = items.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                items.get_nowait()
            except queue.Empty:
                thread.join(0.05)

def _emit(ids, scores, valid, reasons, stream, summary, *, fmt, header, mark_invalid, only_anomalies):
    """Write one batch of results and add it to ``summary``.

    ``ids`` maps output columns to per-row values; ``scores`` holds the
    anomaly scores (NaN where ``valid`` is False); ``reasons`` says why, one
    per row not scored, in order.
    """
    invalid = ~valid
    flagged = valid & (scores > summary["threshold"])
    out = pd.DataFrame(ids)
    out["anomaly_score"] = scores
    if fmt == "csv":
        out["is_anomaly"] = np.where(invalid, "", np.where(flagged, "true", "false"))
    else:
        out["is_anomaly"] = pd.Series(flagged, dtype=object).where(valid, None).to_numpy()
    if mark_invalid:
        status = np.full(len(out), "scored", dtype=object)
        status[invalid] = [f"not scored: {r}" for r in reasons]
        out["status"] = status
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


def score_csv(detector, path, stream, *, id_columns=(), threshold=None, fmt="csv", chunk_size=10_000,
              delimiter=",", mark_invalid=False, only_anomalies=False):
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

    Returns
    -------
    summary : dict
        ``rows``, ``rows_scored``, ``rows_not_scored``, ``anomalies``,
        ``threshold`` and ``max_score``.
    """
    features = _feature_names(detector)
    id_columns = list(id_columns)
    threshold = detector.threshold_ if threshold is None else float(threshold)
    name = readers.display_name(path)
    summary = _new_summary(threshold)
    header = True
    chunks = readers.iter_csv(
        path, columns=features + id_columns, chunk_size=chunk_size, delimiter=delimiter,
        dtype={c: str for c in id_columns},
    )
    for chunk in prefetch(chunks):
        X = readers.to_numeric(chunk, features, name=name)
        invalid, reasons = readers.invalid_rows(X, chunk, features)
        if invalid.any() and not mark_invalid:
            raise readers.invalid_rows_error(name, chunk, invalid, reasons, "fix them or pass --invalid-rows mark")
        scores = np.full(len(X), np.nan)
        valid = ~invalid
        if valid.any():
            scores[valid] = -detector.score_samples(pd.DataFrame(X[valid], columns=features))
        ids = ({c: chunk[c].to_numpy() for c in id_columns} if id_columns else
               {"row": chunk.index.to_numpy() + 1})
        why = [f"{r} (line {row + 2})" for r, row in zip(reasons, chunk.index[invalid])]
        _emit(ids, scores, valid, why, stream, summary, fmt=fmt, header=header, mark_invalid=mark_invalid,
              only_anomalies=only_anomalies)
        header = False
    stream.flush()
    return summary


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
    if heatmaps is not None:
        os.makedirs(heatmaps, exist_ok=True)
    header = True
    batches = readers.iter_images(source, size=shape[1:], grayscale=shape[0] == 1, batch_size=batch_size,
                                  skip_unreadable=mark_invalid)
    for paths, pixels, problems in batches:
        valid = np.array([p is None for p in problems])
        scores = np.full(len(paths), np.nan)
        if valid.any():
            scores[valid] = -detector.score_samples(pixels[valid])
        if heatmaps is not None and valid.any():
            contributions = detector.feature_contributions(pixels[valid])
            for row, i in enumerate(np.flatnonzero(valid)):
                stem = os.path.splitext(os.path.basename(paths[i]))[0]
                number = summary["rows"] + i + 1
                picture = heatmap_image(pixels[i], contributions[row], shape)
                picture.save(os.path.join(heatmaps, f"{number:06d}_{stem}.png"))
        _emit({"path": paths}, scores, valid, [p for p in problems if p is not None], stream, summary, fmt=fmt,
              header=header, mark_invalid=mark_invalid, only_anomalies=only_anomalies)
        header = False
    stream.flush()
    return summary

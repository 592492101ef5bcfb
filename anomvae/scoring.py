"""Streaming scoring of CSV files: the work behind ``anomvae score``.

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
    summary = {"rows": 0, "rows_scored": 0, "rows_not_scored": 0, "anomalies": 0,
               "threshold": threshold, "max_score": None}
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
        flagged = valid & (scores > threshold)

        out = pd.DataFrame({c: chunk[c].to_numpy() for c in id_columns} if id_columns else
                           {"row": chunk.index.to_numpy() + 1})
        out["anomaly_score"] = scores
        if fmt == "csv":
            out["is_anomaly"] = np.where(invalid, "", np.where(flagged, "true", "false"))
        else:
            out["is_anomaly"] = pd.Series(flagged, dtype=object).where(valid, None).to_numpy()
        if mark_invalid:
            status = np.full(len(X), "scored", dtype=object)
            status[invalid] = [f"not scored: {r} (line {row + 2})" for r, row in zip(reasons, chunk.index[invalid])]
            out["status"] = status
        if only_anomalies:
            out = out[flagged | invalid]
        _write(out, stream, fmt, header)
        header = False

        summary["rows"] += len(X)
        summary["rows_scored"] += int(valid.sum())
        summary["rows_not_scored"] += int(invalid.sum())
        summary["anomalies"] += int(flagged.sum())
        if valid.any():
            top = float(np.max(scores[valid]))
            summary["max_score"] = top if summary["max_score"] is None else max(summary["max_score"], top)
    stream.flush()
    return summary

"""Scoring results: one output row per input row, and the batch's summary.

:class:`ResultWriter` writes results as CSV, JSON lines or Parquet and keeps the
:class:`ScoringSummary` of what it wrote; :class:`TopScores` keeps the
highest-scoring rows in bounded memory.

JSON has no infinity: in JSON lines and in the summary an infinite number
is written as the string ``"inf"`` (or ``"-inf"``, and NaN as ``"nan"``);
CSV writes ``inf``. A missing value (the score of a row not scored) is
empty in CSV and ``null`` in JSON and Parquet.

Parquet results are typed: id columns as read (Parquet types from Parquet
data, strings from CSV), ``row`` int64, ``anomaly_score`` and ``p_value``
float64, ``is_anomaly`` bool, ``status`` and ``explanation`` strings. They
are written one row group per batch through ``pyarrow.parquet.ParquetWriter``
to a binary stream.
"""

import contextlib
import heapq
import math
import re
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from .errors import DataError, quote

_NEEDS_QUOTES = re.compile(r'[,"\r\n]')
# The columns score writes besides the id columns (or ``row``, ``path``).
OUTPUT_COLUMNS = ("anomaly_score", "p_value", "is_anomaly", "status", "explanation")


def check_id_columns(id_columns):
    """Refuse an id column named as one of :data:`OUTPUT_COLUMNS`: it would
    be written twice under one name."""
    for column in id_columns:
        if column in OUTPUT_COLUMNS:
            raise DataError(f"the id column {quote(column)} has the name of a column that score writes "
                            f"({', '.join(OUTPUT_COLUMNS)}); rename it in the data")


def json_safe(value):
    """``value`` (numbers, strings, lists, dicts) as strict JSON can hold
    it: numpy scalars as Python ones, non-finite floats as ``"inf"``,
    ``"-inf"`` or ``"nan"``."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return value


def _json_cells(values):
    """One float column for JSON lines: infinities as ``"inf"``/``"-inf"``
    (pandas would write null, which means missing)."""
    infinite = np.isinf(values)
    if not infinite.any():
        return values
    cells = values.astype(object)
    cells[infinite] = np.where(values[infinite] > 0, "inf", "-inf")
    return cells


def _quote(text):
    return '"' + text.replace('"', '""') + '"' if _NEEDS_QUOTES.search(text) else text


# Python's repr of a float and Arrow's cast to string both give the shortest
# digits that round-trip, but lay them out differently: repr writes ".0" on
# whole numbers and an exponent below 1e-4 or from 1e16; Arrow writes no
# ".0", and an exponent below 1e-6 or, where it is shorter, from 1e10. In
# between, for numbers that are not whole, the two agree (tests/test_results_csv.py
# checks every magnitude digit by digit).
_ARROW_LOW, _ARROW_HIGH = 1e-4, 1e10


def _float_cells(values):
    """A float column as Arrow strings spelled as ``repr`` spells them;
    missing (NaN) as null. float32 values are written as the float64
    numbers they are, as ``tolist`` gives them to ``repr``."""
    values = np.asarray(values, dtype=np.float64)
    cells = pc.cast(pa.array(values, from_pandas=True), pa.string())
    magnitude = np.abs(values)
    with np.errstate(invalid="ignore"):
        outside = (magnitude < _ARROW_LOW) | (magnitude >= _ARROW_HIGH)
        odd = np.isfinite(values) & (outside | (values == np.floor(values)))
    if not odd.any():
        return cells
    # Whole, tiny and huge numbers (few, among real scores): repr each one
    # and put it in place.
    where = np.flatnonzero(odd)
    fixed = pa.array([repr(v) for v in values[where].tolist()], pa.string())
    return pc.replace_with_mask(cells, pa.array(odd), fixed)


def _text_cells(values):
    """A text column as Arrow strings, quoted where CSV needs it; missing
    (None, NaN) as null. Values that are not strings are written as
    ``str`` spells them."""
    try:
        cells = pa.array(values, type=pa.string(), from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        cells = pa.array(["" if v is None or v != v else str(v) for v in values.tolist()], pa.string())
    needs = pc.match_substring_regex(cells, _NEEDS_QUOTES.pattern)
    if not pc.any(needs).as_py():
        return cells
    quoted = pc.binary_join_element_wise('"', pc.replace_substring(cells, '"', '""'), '"', "")
    return pc.if_else(needs, quoted, cells)


def _csv_cells(values):
    """One column as Arrow strings holding its CSV text: floats at full
    precision (``repr``), missing as null."""
    kind = values.dtype.kind
    if kind == "f":
        return _float_cells(values)
    if kind == "b":
        return pa.array(np.where(values, "True", "False"), pa.string())
    if kind in "iu":
        return pc.cast(pa.array(values), pa.string())
    return _text_cells(values)


def _csv_text(frame):
    """The rows of ``frame`` as CSV text, one line each ending in a newline,
    joined by Arrow's compiled string kernels (``DataFrame.to_csv`` and
    ``pyarrow.csv.write_csv`` quote differently)."""
    # 64-bit offsets: a frame's text may pass 2 GiB.
    columns = [_csv_cells(frame[c].to_numpy()).cast(pa.large_string()) for c in frame.columns]
    # Null cells (missing values) join as empty strings.
    comma, newline, empty = (pa.scalar(text, pa.large_string()) for text in (",", "\n", ""))
    lines = pc.binary_join_element_wise(*columns, comma, null_handling="replace", null_replacement="")
    lines = pc.binary_join_element_wise(lines, newline, empty)
    # The lines lie end to end in the array's data buffer.
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64, count=len(lines) + 1, offset=8 * lines.offset)
    return str(memoryview(lines.buffers()[2])[offsets[0]:offsets[-1]], "utf-8")


def write_frame(frame, stream, fmt, header):
    """Write ``frame`` to ``stream`` as CSV (with its header when
    ``header``) or as JSON lines."""
    if fmt == "csv":
        if header:
            stream.write(",".join(_quote(str(c)) for c in frame.columns) + "\n")
        if len(frame):
            stream.write(_csv_text(frame))
    elif len(frame):
        infinite = [c for c in frame.columns if frame[c].dtype.kind == "f" and np.isinf(frame[c].to_numpy()).any()]
        if infinite:
            frame = frame.copy()
            for column in infinite:
                frame[column] = _json_cells(frame[column].to_numpy())
        text = frame.to_json(orient="records", lines=True, double_precision=15)
        stream.write(text if text.endswith("\n") else text + "\n")


@dataclass
class ScoringSummary:
    """What a scoring run wrote, as ``--summary-json`` reports it.

    Attributes
    ----------
    rows, rows_scored, rows_not_scored, anomalies : int
        Rows read, scored, left unscored (invalid), and flagged.
    threshold : float
        The anomaly-score cut, in nats.
    max_score : float or None
        Highest anomaly score; None when no row was scored.
    calibration_fpr : float or None
        The model's calibrated false-alarm rate, if any.
    top_anomalies : list of dict
        The highest-scoring rows, highest first: their id columns (or
        ``row``, or ``path``) and ``anomaly_score``.
    score_shift : ScoreShift or None
        The batch's shift test (:func:`anomvae.calibration.score_shift`).
    """

    threshold: float
    rows: int = 0
    rows_scored: int = 0
    rows_not_scored: int = 0
    anomalies: int = 0
    max_score: float = None
    calibration_fpr: float = None
    top_anomalies: list = field(default_factory=list)
    score_shift: object = None

    def count(self, scores, valid, flagged):
        """Add one batch: its anomaly ``scores`` and masks."""
        self.rows += len(scores)
        self.rows_scored += int(valid.sum())
        self.rows_not_scored += int((~valid).sum())
        self.anomalies += int(flagged.sum())
        if valid.any():
            top = float(np.max(scores[valid]))
            self.max_score = top if self.max_score is None else max(self.max_score, top)

    def to_dict(self):
        """JSON form, keys in the documented order; non-finite numbers as
        strings (see :func:`json_safe`)."""
        keys = ("rows", "rows_scored", "rows_not_scored", "anomalies", "threshold", "max_score",
                "calibration_fpr", "top_anomalies")
        values = {key: getattr(self, key) for key in keys}
        values["score_shift"] = None if self.score_shift is None else asdict(self.score_shift)
        return json_safe(values)


def _arrow_schema(frame):
    """The Parquet schema of the results, from their first batch ``frame``."""
    fields = []
    for column in frame.columns:
        dtype = frame[column].dtype
        if isinstance(dtype, pd.ArrowDtype):
            kind = dtype.pyarrow_dtype
        elif dtype.kind in "OSU" or isinstance(dtype, pd.StringDtype):
            kind = pa.string()
        elif isinstance(dtype, pd.BooleanDtype):
            kind = pa.bool_()
        else:
            kind = pa.from_numpy_dtype(dtype)
        fields.append(pa.field(str(column), kind))
    return pa.schema(fields)


class ResultWriter:
    """Writes batches of results to ``stream`` and counts them in ``summary``.

    Columns, in order: the id columns, ``anomaly_score`` (empty where a row
    was not scored), any ``before`` columns, ``is_anomaly``, ``status``
    (with ``mark_invalid``: "scored" or "not scored: why"), any ``after``
    columns. With ``only_anomalies`` only flagged rows (and rows not scored)
    are written. ``rows_written`` counts the rows written so far. With
    ``fmt="parquet"``, ``stream`` is binary and :meth:`close` (or leaving
    a ``with`` block) writes the file's footer.
    """

    def __init__(self, stream, summary, *, fmt="csv", mark_invalid=False, only_anomalies=False):
        self.stream, self.summary, self.fmt = stream, summary, fmt
        self.mark_invalid, self.only_anomalies = mark_invalid, only_anomalies
        self.header_written = False
        self.rows_written = 0
        self._parquet = None  # the pyarrow ParquetWriter, from the first batch on

    def write(self, ids, scores, valid, reasons, *, before=None, after=None):
        """Write one batch. ``ids`` maps output columns to per-row values;
        ``scores`` holds anomaly scores (NaN where ``valid`` is False);
        ``reasons`` says why, one per row not scored, in order.

        Returns the 1-based position in the output of each of the batch's
        rows, 0 for a row left out by ``only_anomalies``."""
        invalid = ~valid
        flagged = valid & (scores > self.summary.threshold)
        out = pd.DataFrame(ids)
        out["anomaly_score"] = scores
        for column, values in (before or {}).items():
            out[column] = values
        if self.fmt == "csv":
            out["is_anomaly"] = np.where(invalid, "", np.where(flagged, "true", "false"))
        elif self.fmt == "parquet":
            out["is_anomaly"] = pd.array(np.where(invalid, None, flagged), dtype="boolean")
        else:
            out["is_anomaly"] = pd.Series(flagged, dtype=object).where(valid, None).to_numpy()
        if self.mark_invalid:
            status = np.full(len(out), "scored", dtype=object)
            status[invalid] = [f"not scored: {r}" for r in reasons]
            out["status"] = status
        for column, values in (after or {}).items():
            out[column] = values
        written = flagged | invalid if self.only_anomalies else np.ones(len(out), dtype=bool)
        if self.only_anomalies:
            out = out[written]
        if self.fmt == "parquet":
            self._write_parquet(out)
        else:
            write_frame(out, self.stream, self.fmt, header=not self.header_written)
        self.header_written = True
        self.summary.count(scores, valid, flagged)
        positions = np.where(written, self.rows_written + np.cumsum(written), 0)
        self.rows_written += int(written.sum())
        return positions

    def _write_parquet(self, frame):
        import pyarrow.parquet as pq

        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self.stream, _arrow_schema(frame))
        table = pa.Table.from_pandas(frame.reset_index(drop=True), schema=self._parquet.schema, preserve_index=False)
        self._parquet.write_table(table)

    def close(self):
        """End the output: the Parquet footer (nothing for CSV and JSON lines)."""
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        """:meth:`close`; after an error, one in closing is not raised over it."""
        if kind is None:
            self.close()
        else:
            with contextlib.suppress(Exception):
                self.close()


class TopScores:
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


def json_value(value):
    """``value`` for a JSON document: None where pandas sees a missing value;
    a date or time (a typed Parquet id) in ISO format, another value JSON
    has no type for (a decimal, bytes) as its text."""
    if pd.isna(value):
        return None
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (str, bool, int, float, list, dict)):
        return value
    return value.isoformat() if hasattr(value, "isoformat") else str(value)

"""Readers that turn CSV files into numeric arrays.

They never touch torch. Errors are :class:`DataError`, whose message names
the file and, where it applies, the column, the line and the value at fault.
Line numbers count the header as line 1 and assume one line per record
(no line breaks inside quoted fields); blank lines are kept as records so
the numbering stays exact.
"""

import sys

import numpy as np
import pandas as pd

# Lines listed in an error message before "and N more".
_MAX_LINES_SHOWN = 5


class DataError(ValueError):
    """Input data that cannot be used, with a message naming where and why."""


def display_name(path):
    return "<stdin>" if path == "-" else str(path)


def _source(path):
    return sys.stdin if path == "-" else path


def _read(path, delimiter, **kwargs):
    name = display_name(path)
    try:
        return pd.read_csv(
            _source(path), sep=delimiter, skip_blank_lines=False, skipinitialspace=True, **kwargs
        )
    except pd.errors.EmptyDataError:
        raise DataError(f"{name}: the file is empty (no header line)") from None
    except pd.errors.ParserError as exc:
        raise DataError(f"{name}: cannot be parsed as CSV with delimiter {delimiter!r}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{name}: not a text CSV file ({exc})") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{name}: cannot be read ({exc})") from None


def _check_delimiter(columns, name, delimiter):
    columns = [str(c) for c in columns]
    if len(columns) == 1:
        for other in (";", "\t", "|", ","):
            if other != delimiter and other in columns[0]:
                raise DataError(
                    f"{name}: the header is a single column {columns[0]!r}; the file seems to be "
                    f"delimited by {other!r}, not {delimiter!r} (use --delimiter)"
                )


def read_csv(path, *, delimiter=",", dtype=None):
    """Read a whole CSV file (``"-"`` for stdin; ``.gz`` and other compressions
    are recognised from the file name) into a DataFrame."""
    name = display_name(path)
    frame = _read(path, delimiter, dtype=dtype)
    _check_delimiter(frame.columns, name, delimiter)
    unnamed = [str(c) for c in frame.columns if str(c).startswith("Unnamed: ")]
    if unnamed:
        raise DataError(f"{name}: the header has {len(unnamed)} empty column name(s)")
    if len(frame) == 0:
        raise DataError(f"{name}: the file has a header but no data rows")
    return frame


def iter_csv(path, *, columns, chunk_size, delimiter=",", dtype=None):
    """Stream a CSV file in chunks of ``chunk_size`` rows.

    Yields DataFrames whose index is the 0-based data row number within the
    file (line = row + 2). Before the first chunk, raises
    :class:`DataError` naming every column of ``columns`` the header lacks.
    Columns not in ``columns`` are read and ignored.
    """
    name = display_name(path)
    checked, n_rows = False, 0
    with _read(path, delimiter, chunksize=chunk_size, dtype=dtype) as reader:
        for chunk in reader:
            if not checked:
                _check_delimiter(chunk.columns, name, delimiter)
                missing = [c for c in columns if c not in chunk.columns]
                if missing:
                    raise DataError(f"{name}: missing column(s) {', '.join(map(repr, missing))}")
                checked = True
            if len(chunk):
                n_rows += len(chunk)
                yield chunk
    if not n_rows:
        raise DataError(f"{name}: the file has a header but no data rows")


def select_features(frame, *, columns=None, exclude=(), id_columns=(), name):
    """Choose the feature columns of a training frame.

    ``columns`` lists them explicitly; otherwise every column that is not an
    id column, not excluded and holds at least one number is a feature.
    Columns holding no number at all are skipped and returned as such.

    Returns
    -------
    features : list of str
    skipped : list of str
        Text columns that were left out.
    """
    header = [str(c) for c in frame.columns]
    requested = list(columns or ()) + list(exclude) + list(id_columns)
    missing = [c for c in requested if c not in header]
    if missing:
        raise DataError(f"{name}: no column(s) {', '.join(map(repr, missing))} in the header")
    if columns:
        overlap = [c for c in columns if c in id_columns or c in exclude]
        if overlap:
            raise DataError(f"{name}: column(s) {', '.join(map(repr, overlap))} both selected and excluded")
        return list(columns), []
    features, skipped = [], []
    for column in header:
        if column in exclude or column in id_columns:
            continue
        values = frame[column]
        if pd.api.types.is_numeric_dtype(values) or pd.to_numeric(values, errors="coerce").notna().any():
            features.append(column)
        else:
            skipped.append(column)
    if not features:
        raise DataError(f"{name}: no numeric column to use as a feature")
    return features, skipped


def _line(row):
    return int(row) + 2


def _lines_text(rows):
    lines = [str(_line(r)) for r in rows[:_MAX_LINES_SHOWN]]
    more = len(rows) - _MAX_LINES_SHOWN
    return ", ".join(lines) + (f" and {more} more" if more > 0 else "")


def to_numeric(frame, columns, *, name):
    """Convert ``columns`` of ``frame`` to a float64 array.

    A value that is not a number raises :class:`DataError` naming the column,
    line and value. Empty cells, NaN and infinities are kept (as NaN or inf)
    for the caller to handle with :func:`invalid_rows`.
    """
    block = np.empty((len(frame), len(columns)), dtype=np.float64)
    for j, column in enumerate(columns):
        values = frame[column]
        if pd.api.types.is_bool_dtype(values):
            raise DataError(f"{name}: column {column!r} holds true/false values, not numbers")
        if not pd.api.types.is_numeric_dtype(values):
            numbers = pd.to_numeric(values, errors="coerce")
            bad = numbers.isna() & values.notna()
            # "inf" and "nan" spelled out parse as numbers; anything else left is text.
            if bad.any():
                row = bad.idxmax()
                raise DataError(
                    f"{name}: column {column!r}, line {_line(row)}: value {values[row]!r} is not a number"
                )
            values = numbers
        block[:, j] = values.to_numpy(dtype=np.float64, na_value=np.nan)
    return block


def invalid_rows(X, frame, columns):
    """Rows of ``X`` with an empty cell, NaN or infinity.

    Returns
    -------
    mask : ndarray of bool, shape (n_rows,)
    reasons : list of str
        One per invalid row, e.g. ``"empty or NaN value in column 'AC'"``.
    """
    finite = np.isfinite(X)
    mask = ~finite.all(axis=1)
    reasons = []
    for i in np.flatnonzero(mask):
        j = int(np.argmin(finite[i]))
        kind = "infinite" if np.isinf(X[i, j]) else "empty or NaN"
        reasons.append(f"{kind} value in column {columns[j]!r}")
    return mask, reasons


def invalid_rows_error(name, frame, mask, reasons, hint):
    rows = frame.index[mask]
    return DataError(
        f"{name}: {len(rows)} row(s) with empty, NaN or infinite values at line(s) {_lines_text(rows)} "
        f"(line {_line(rows[0])}: {reasons[0]}); {hint}"
    )

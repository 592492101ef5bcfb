"""Reading tables (CSV files) into numeric arrays.

Never touches torch. Errors are :class:`~anomvae.errors.DataError`, whose
message names the file and, where it applies, the column, the line and the
value at fault.

Rows are numbered from 0, as the index of every frame read here: data row
``r`` is on line ``r + 2`` of the file (:func:`line_number`), counting the
header as line 1 and assuming one line per record (no line breaks inside
quoted fields); blank lines are kept as records so the numbering stays exact.
"""

import contextlib
import csv
import sys
import warnings

import numpy as np
import pandas as pd

from .errors import DataError

# Lines listed in an error message before "and N more".
_MAX_LINES_SHOWN = 5


def display_name(path):
    return "<stdin>" if path == "-" else str(path)


def _source(path):
    return sys.stdin if path == "-" else path


def _first_line_with_extra_values(path, delimiter):
    """Line number (header = 1) of the first line holding a non-empty value
    beyond the header's columns, for a plain file on disk; else None."""
    compressed = str(path).lower().endswith((".gz", ".bz2", ".zip", ".xz", ".zst", ".tar"))
    # A delimiter of several characters is a regular expression to pandas; csv cannot follow it.
    if path == "-" or compressed or len(delimiter) != 1:
        return None
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as handle:
            lines = csv.reader(handle, delimiter=delimiter, skipinitialspace=True)
            width = len(next(lines, []))
            for number, fields in enumerate(lines, start=2):
                if any(field.strip() for field in fields[width:]):
                    return number
    except (OSError, csv.Error, TypeError):
        return None
    return None


@contextlib.contextmanager
def _no_extra_fields(path, delimiter):
    """Turn pandas' warning about lines with more fields than the header
    into a :class:`DataError`: those values would be dropped silently. (A
    trailing delimiter on a line adds an empty field, which pandas drops
    without a warning, and which loses nothing.)"""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="Length of header or names does not match",
                                category=pd.errors.ParserWarning)
        try:
            yield
        except pd.errors.ParserWarning:
            line = _first_line_with_extra_values(path, delimiter)
            where = "a line" if line is None else f"line {line}"
            raise DataError(
                f"{display_name(path)}: {where} has more values than the header has columns "
                f"(delimiter {delimiter!r}); name every column in the header"
            ) from None


@contextlib.contextmanager
def _reading(path, delimiter):
    """What pandas raises while reading ``path`` (at the start, or at any
    later chunk), as a :class:`DataError` naming the file."""
    name = display_name(path)
    try:
        with _no_extra_fields(path, delimiter):
            yield
    except pd.errors.EmptyDataError:
        raise DataError(f"{name}: the file is empty (no header line)") from None
    except pd.errors.ParserError as exc:
        raise DataError(f"{name}: cannot be parsed as CSV with delimiter {delimiter!r}: {str(exc).strip()}") from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{name}: not a text CSV file ({exc})") from None
    except (OSError, EOFError) as exc:
        raise DataError(f"{name}: cannot be read ({exc})") from None


def _read(path, delimiter, **kwargs):
    # index_col=False: when lines hold one field more than the header
    # (a trailing delimiter), pandas would otherwise take the first
    # column as the index and shift every value one column to the left.
    with _reading(path, delimiter):
        return pd.read_csv(
            _source(path), sep=delimiter, skip_blank_lines=False, skipinitialspace=True, index_col=False,
            **kwargs,
        )


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
        for chunk in _checked_chunks(reader, path, delimiter):
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


def _checked_chunks(reader, path, delimiter):
    """The reader's chunks, a malformed or unreadable part further down
    named as :func:`_read` names one at the start."""
    while True:
        with _reading(path, delimiter):
            chunk = next(reader, None)
        if chunk is None:
            return
        yield chunk


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


def line_number(row):
    """The file line (header = line 1) of the 0-based data row ``row``."""
    return int(row) + 2


def lines_text(rows):
    """Line numbers of 0-based data ``rows``, the first few and how many more."""
    lines = [str(line_number(r)) for r in rows[:_MAX_LINES_SHOWN]]
    more = len(rows) - _MAX_LINES_SHOWN
    return ", ".join(lines) + (f" and {more} more" if more > 0 else "")


def to_numeric(frame, columns, *, name):
    """Convert ``columns`` of ``frame`` to a float64 array.

    A value that is not a number raises :class:`DataError` naming the column,
    line and value. Empty cells, NaN and infinities are kept (as NaN or inf)
    for the caller to handle (see
    :meth:`anomvae.preprocessing.Standardizer.unusable_rows`).
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
                    f"{name}: column {column!r}, line {line_number(row)}: value {values[row]!r} is not a number"
                )
            values = numbers
        block[:, j] = values.to_numpy(dtype=np.float64, na_value=np.nan)
    return block


def invalid_rows_error(name, rows, reasons, hint):
    """The :class:`DataError` for 0-based data ``rows`` that cannot be used,
    one reason each (as :meth:`~anomvae.preprocessing.Standardizer.unusable_rows`
    gives them)."""
    return DataError(
        f"{name}: {len(rows)} row(s) with empty, NaN or infinite values at line(s) {lines_text(rows)} "
        f"(line {line_number(rows[0])}: {reasons[0]}); {hint}"
    )


def read_feature_rows(path, features, standardizer, *, delimiter=",", skip_invalid=False, chunk_size=10_000):
    """Read the columns ``features`` (by name) of a CSV file, checking each
    row with ``standardizer`` (a :class:`~anomvae.preprocessing.Standardizer`):
    the rows a model is calibrated on.

    Returns
    -------
    X : DataFrame
        The usable rows.
    skipped : list of int
        0-based data rows left out as unusable (only with ``skip_invalid``;
        otherwise such rows raise :class:`DataError`).
    """
    name = display_name(path)
    blocks, skipped = [], []
    for chunk in iter_csv(path, columns=features, chunk_size=chunk_size, delimiter=delimiter):
        X = to_numeric(chunk, features, name=name)
        invalid, reasons = standardizer.unusable_rows(X, features)
        if invalid.any():
            if not skip_invalid:
                raise invalid_rows_error(name, chunk.index[invalid], reasons, "fix them or pass --invalid-rows skip")
            skipped += [int(row) for row in chunk.index[invalid]]
        blocks.append(X[~invalid])
    return pd.DataFrame(np.concatenate(blocks), columns=features), skipped

"""Reading tables (CSV files; Parquet through :mod:`anomvae.parquet`) into numeric arrays.

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
import io
import os
import re
import sys
import warnings

import numpy as np
import pandas as pd

from . import parquet
from .errors import DataError, quote

# Lines listed in an error message before "and N more".
_MAX_LINES_SHOWN = 5
# What pandas reads as missing by default: in every column but the text
# (id) columns, whose values are copied to the output as written.
MISSING_MARKERS = frozenset(["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND",
                             "1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"])
_TRAILING_FIELDS = 16  # empty fields past the header's columns read as missing (see _read)
_PACKED = (".gz", ".bz2", ".zip", ".xz", ".zst", ".tar")  # names pandas decompresses
# A number written with a decimal comma, which a file read with --decimal '.' leaves as text.
_DECIMAL_COMMA = re.compile(r"\s*[-+]?\d*,\d+\s*")


def display_name(path):
    return "<stdin>" if path == "-" else str(path)


def _stdin():
    if sys.stdin is None or sys.stdin.closed:
        raise DataError("<stdin>: standard input is closed; give DATA as a file name, or pipe the CSV in")
    return sys.stdin


def _first_line_with_extra_values(path, delimiter):
    """Line number (header = 1) of the first line holding a non-empty value beyond the
    header's columns, for a plain file on disk (0 when none); None when that cannot be told."""
    # pandas reads a longer delimiter as a regular expression, which csv cannot follow; stdin was read.
    if path == "-" or len(delimiter) != 1 or not os.path.isfile(path) or str(path).lower().endswith(_PACKED):
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
    return 0


@contextlib.contextmanager
def _no_extra_fields(path, delimiter):
    """Turn pandas' warning of lines with more fields than the header into a :class:`DataError`: those
    values would be dropped silently (the empty fields of trailing delimiters are missing values, see
    :func:`_read`, and raise none). A file on disk is scanned for the line."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("always", message="Length of header or names does not match",
                                category=pd.errors.ParserWarning)
        yield
    lost = [w for w in caught if "Length of header or names" in str(w.message)]
    for other in (w for w in caught if w not in lost):  # passed on, not swallowed
        warnings.warn_explicit(other.message, other.category, other.filename, other.lineno)
    line = _first_line_with_extra_values(path, delimiter) if lost else 0
    if line != 0:
        raise DataError(f"{display_name(path)}: {'a line' if line is None else f'line {line}'} has more values "
                        f"than the header has columns (delimiter {delimiter!r}); name every column in the header")


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


class _Rejoined(io.TextIOBase):
    """A text stream whose header line was read ahead: that line, then the rest."""

    def __init__(self, head, rest):
        self._head, self._rest = head, rest

    def readable(self):
        return True

    def read(self, size=-1):
        if not self._head:
            return self._rest.read(size)
        if size is None or size < 0:
            text, self._head = self._head + self._rest.read(), ""
        else:
            text, self._head = self._head[:size], self._head[size:]
        return text

    def readline(self, size=-1):
        if not self._head:
            return self._rest.readline(size)
        return self.read(len(self._head) if size is None or size < 0 else min(size, len(self._head)))


def _header_fields(source, delimiter):
    """The fields of the header line of ``source``, as pandas splits them, unchanged."""
    head = pd.read_csv(source, sep=delimiter, header=None, nrows=1, dtype=str, na_filter=False,
                       index_col=False, skip_blank_lines=False)
    return [str(field) for field in head.iloc[0]] if len(head) else [""]


def _open(path, delimiter, stack):
    """What pandas reads ``path`` from, and the fields of its header. A file
    is read twice (its header, then all of it); standard input or a pipe,
    which can be read only once, gives its header line back."""
    if path != "-" and os.path.isfile(path):
        return path, _header_fields(path, delimiter)
    stream = _stdin() if path == "-" else stack.enter_context(open(path, encoding="utf-8", newline=""))
    head = stream.readline()
    while head.count('"') % 2:  # a quoted name holds a line break: the header goes on
        more = stream.readline()
        if not more:
            break
        head += more
    return _Rejoined(head, stream), _header_fields(io.StringIO(head), delimiter)


def _column_names(fields, name):
    """The header's column names: leading spaces dropped, ``Unnamed: i``
    for an empty one (as pandas names it). A name given twice is an error:
    pandas would silently rename the second one ``x.1``."""
    names, seen = [], set()
    for i, field in enumerate(fields):
        column = field.lstrip(" ") or f"Unnamed: {i}"
        if column in seen:
            raise DataError(f"{name}: the header names column {quote(column)} more than once; "
                            "give each column its own name")
        seen.add(column)
        names.append(column)
    return names


def _read(path, delimiter, *, decimal=".", text_columns=(), chunk_size=None):
    """The frame of ``path`` (one, or one per ``chunk_size`` rows), columns
    named by :func:`_column_names`. ``text_columns`` are read as text and
    verbatim (nothing counts as missing, no space is dropped); in the other
    columns the values of :data:`MISSING_MARKERS` are missing."""
    with contextlib.ExitStack() as stack:
        with _reading(path, delimiter):
            source, fields = _open(path, delimiter, stack)
            names = _column_names(fields, display_name(path))
            text = {i for i, column in enumerate(names) if column in text_columns}
            # index_col=False: with trailing delimiters pandas would make the
            # first column the index, shifting every value one column left; their
            # empty fields are missing values, dropped without the warning a value
            # beyond the header gets (see _no_extra_fields). skipinitialspace=False:
            # id values keep their spaces; numbers are read despite them.
            missing = {i: MISSING_MARKERS for i in range(len(names)) if i not in text}
            if len(delimiter) == 1:  # pandas' Python engine (a regex delimiter) refuses such columns
                missing.update((i, [""]) for i in range(len(names), len(names) + _TRAILING_FIELDS))
            frames = pd.read_csv(source, sep=delimiter, decimal=decimal, skip_blank_lines=False,
                                 skipinitialspace=False, index_col=False, keep_default_na=False,
                                 dtype={i: str for i in text}, na_values=missing, chunksize=chunk_size)
        if chunk_size is None:
            frames = iter([frames])
        else:
            stack.enter_context(frames)
        while True:
            with _reading(path, delimiter):
                frame = next(frames, None)
            if frame is None:
                return
            if len(frame.columns) == len(names):
                frame.columns = names
            yield frame


def _check_delimiter(columns, name, delimiter):
    columns = [str(c) for c in columns]
    if len(columns) == 1:
        for other in (";", "\t", "|", ","):
            if other != delimiter and other in columns[0]:
                raise DataError(
                    f"{name}: the header is a single column {quote(columns[0])}; the file seems to be "
                    f"delimited by {other!r}, not {delimiter!r} (use --delimiter)"
                )


def read_csv(path, *, delimiter=",", decimal=".", text_columns=()):
    """Read a whole CSV file (``"-"`` for stdin; ``.gz`` and other compressions
    are recognised from the file name) into a DataFrame.

    ``text_columns`` (id columns) are read as text, each value as written;
    in the other columns an empty cell or a marker such as ``NA`` is missing.
    A column name given twice in the header is an error.
    """
    name = display_name(path)
    (frame,) = _read(path, delimiter, decimal=decimal, text_columns=text_columns)
    _check_delimiter(frame.columns, name, delimiter)
    unnamed = [str(c) for c in frame.columns if str(c).startswith("Unnamed: ")]
    if unnamed:
        raise DataError(f"{name}: the header has {len(unnamed)} empty column name(s)")
    if len(frame) == 0:
        raise DataError(f"{name}: the file has a header but no data rows")
    return frame


def iter_csv(path, *, columns, chunk_size, delimiter=",", decimal=".", text_columns=()):
    """Stream a CSV file in chunks of ``chunk_size`` rows.

    Yields DataFrames whose index is the 0-based data row number within the
    file (line = row + 2). Before the first chunk, raises
    :class:`DataError` naming every column of ``columns`` the header lacks.
    Columns not in ``columns`` are read and ignored; ``text_columns`` are
    read as in :func:`read_csv`.
    """
    name = display_name(path)
    checked, n_rows = False, 0
    for chunk in _read(path, delimiter, decimal=decimal, text_columns=text_columns, chunk_size=chunk_size):
        if not checked:
            _check_delimiter(chunk.columns, name, delimiter)
            missing = [c for c in columns if c not in chunk.columns]
            if missing:
                raise DataError(f"{name}: missing column(s) {', '.join(map(quote, missing))}")
            checked = True
        if len(chunk):
            n_rows += len(chunk)
            yield chunk
    if not n_rows:
        raise DataError(f"{name}: the file has a header but no data rows")


def select_features(frame, *, columns=None, exclude=(), id_columns=(), name, decimal="."):
    """Choose the feature columns of a training frame.

    ``columns`` lists them explicitly; otherwise every column that is not an
    id column, not excluded and holds at least one number is a feature.
    Columns holding no number at all are skipped and returned as such; one
    whose values all look like numbers with a decimal comma is an error
    that says to read the file with ``decimal=","``.

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
        raise DataError(f"{name}: no column(s) {', '.join(map(quote, missing))} in the header")
    if columns:
        overlap = [c for c in columns if c in id_columns or c in exclude]
        if overlap:
            raise DataError(f"{name}: column(s) {', '.join(map(quote, overlap))} both selected and excluded")
        return list(columns), []
    features, skipped = [], []
    for column in header:
        if column in exclude or column in id_columns:
            continue
        values = frame[column]
        if pd.api.types.is_numeric_dtype(values) or _numbers(values, decimal).notna().any():
            features.append(column)
        elif decimal == "." and values.notna().any() and _decimal_commas(values.dropna()):
            raise DataError(f"{name}: column {quote(column)} holds numbers written with a decimal comma "
                            f"(such as {quote(values.dropna().iloc[0])}); {_DECIMAL_HINT}")
        else:
            skipped.append(column)
    if not features:
        raise DataError(f"{name}: no numeric column to use as a feature")
    return features, skipped


def line_number(row):
    """The file line (header = line 1) of the 0-based data row ``row``."""
    return int(row) + 2


def lines_text(rows, label=lambda row: str(line_number(row))):
    """Line numbers (or other ``label``) of 0-based data ``rows``, the first few and how many more."""
    more = len(rows) - _MAX_LINES_SHOWN
    return ", ".join(map(label, rows[:_MAX_LINES_SHOWN])) + (f" and {more} more" if more > 0 else "")


_DECIMAL_HINT = "read the file with --decimal ',' (and a --delimiter other than ',')"


def _decimal_commas(values):
    """Whether every one of the text ``values`` looks like a number with a decimal comma."""
    return bool(values.astype(str).str.fullmatch(_DECIMAL_COMMA).all())


def _numbers(values, decimal):
    """The numbers in text ``values`` (NaN where none), ``decimal`` being
    the decimal mark, as pandas' parser reads them."""
    if decimal != ".":
        text = values.astype(str)
        # With another decimal mark, "1.234" is not 1.234 (it may mean 1234).
        values = text.where(~text.str.contains(".", regex=False), "").str.replace(decimal, ".", regex=False)
    return pd.to_numeric(values, errors="coerce")


def to_numeric(frame, columns, *, name, decimal="."):
    """Convert ``columns`` of ``frame`` to a float64 array.

    A value that is not a number raises :class:`DataError` naming the column,
    line and value (and, when the column's text all looks like numbers with
    a decimal comma, how to read them). Empty cells, blank ones, the markers
    of :data:`MISSING_MARKERS`, NaN and infinities are kept (as NaN or inf)
    for the caller to handle (see
    :meth:`anomvae.preprocessing.Standardizer.unusable_rows`).
    """
    block = np.empty((len(frame), len(columns)), dtype=np.float64)
    for j, column in enumerate(columns):
        values = frame[column]
        if pd.api.types.is_bool_dtype(values):
            raise DataError(f"{name}: column {quote(column)} holds true/false values, not numbers")
        if not pd.api.types.is_numeric_dtype(values):
            numbers = _numbers(values, decimal)
            bad = numbers.isna() & values.notna()
            if bad.any():
                # Values are read with their spaces: " NA" and "  " are missing too.
                spelled = values[bad].astype(str).str.strip().isin(MISSING_MARKERS)
                bad[spelled.index[spelled.to_numpy()]] = False
            # "inf" and "nan" spelled out parse as numbers; anything else left is text.
            if bad.any():
                row = bad.idxmax()
                hint = f"; {_DECIMAL_HINT}" if decimal == "." and _decimal_commas(values[bad]) else ""
                raise DataError(f"{name}: column {quote(column)}, line {line_number(row)}: "
                                f"value {quote(values[row])} is not a number{hint}")
            values = numbers
        block[:, j] = values.to_numpy(dtype=np.float64, na_value=np.nan)
    return block


def invalid_rows_error(name, rows, reasons, hint, names):
    """The :class:`DataError` for unusable 0-based data ``rows``, one reason each, named by ``names`` (a RowNames)."""
    return DataError(f"{name}: {len(rows)} row(s) with empty, NaN or infinite values at "
                     f"{names.text(rows)} ({names(rows[0])}: {reasons[0]}); {hint}")


class RowNames:
    """How messages name 0-based data rows of ``path``: CSV ``line N``; Parquet ``FILE row I`` (0-based in FILE)."""

    def __init__(self, path):
        self._starts = parquet.file_starts(path) if parquet.is_parquet_source(path) else None

    def __call__(self, row):
        if self._starts is None:
            return f"line {line_number(row)}"
        first, path = next((s, p) for s, p in reversed(self._starts) if s <= row)
        return f"{path} row {int(row) - first}"

    def text(self, rows):
        """The first few ``rows`` and how many more: ``line(s) 3, 5`` or ``a.parquet row 1, ...``."""
        return f"line(s) {lines_text(rows)}" if self._starts is None else lines_text(rows, self)


def read_table(path, *, delimiter=",", decimal=".", text_columns=()):
    """:func:`read_csv`, or :func:`anomvae.parquet.read_parquet` for Parquet ``path``."""
    if not parquet.is_parquet_source(path):
        return read_csv(path, delimiter=delimiter, decimal=decimal, text_columns=text_columns)
    return parquet.read_parquet(path, text_columns=text_columns)


def iter_table(path, *, columns, chunk_size, delimiter=",", decimal=".", text_columns=()):
    """:func:`iter_csv`, or :func:`anomvae.parquet.iter_parquet` for Parquet ``path`` (no dialect)."""
    if parquet.is_parquet_source(path):
        return parquet.iter_parquet(path, columns=columns, chunk_size=chunk_size, text_columns=text_columns)
    return iter_csv(path, columns=columns, chunk_size=chunk_size, delimiter=delimiter, decimal=decimal,
                    text_columns=text_columns)


def read_feature_rows(path, features, standardizer, *, delimiter=",", decimal=".", skip_invalid=False,
                      chunk_size=10_000):
    """Read the columns ``features`` (by name) of a CSV file or Parquet data, checking each row with
    ``standardizer`` (a :class:`~anomvae.preprocessing.Standardizer`): the rows a model is calibrated on.

    Returns
    -------
    X : DataFrame
        The usable rows.
    skipped : list of int
        0-based data rows left out as unusable (only with ``skip_invalid``;
        otherwise such rows raise :class:`DataError`).
    """
    name, blocks, skipped = display_name(path), [], []
    for chunk in iter_table(path, columns=features, chunk_size=chunk_size, delimiter=delimiter, decimal=decimal):
        X = to_numeric(chunk, features, name=name, decimal=decimal)
        invalid, reasons = standardizer.unusable_rows(X, features)
        if invalid.any():
            if not skip_invalid:
                raise invalid_rows_error(name, chunk.index[invalid], reasons, "fix them or pass --invalid-rows skip",
                                         RowNames(path))
            skipped += [int(row) for row in chunk.index[invalid]]
        blocks.append(X[~invalid])
    return pd.DataFrame(np.concatenate(blocks), columns=features), skipped

"""Reading Parquet data (a file, a folder or a glob of files) in batches.

pyarrow (a dependency of anomvae; the ``parquet`` extra is kept for
installs that named it) is imported only when a Parquet source is read or
written. Never touches torch.

The files of a source are read one after another, in a stable order (see
:func:`list_files`), each by record batches of at most ``chunk_size`` rows,
so memory holds one row group and one batch at a time. Frames are indexed
by the 0-based data row over the whole source, as frames from
:mod:`anomvae.tables` are; :func:`file_starts` says which file a row is in.
Columns are matched by name; feature columns must hold numbers (integers,
floats or decimals; nulls are missing values) and are read as float64; id
columns keep their Parquet type (pandas ``ArrowDtype``), so that they are
written out as they came in.
"""

import glob
import os

import numpy as np
import pandas as pd

from .errors import DataError, quote

PARQUET_EXTENSIONS = (".parquet", ".pq")
_READ_BUFFER = 1 << 16  # bytes per read of a column chunk (see _open)


def is_pattern(text):
    """Whether DATA ``text`` is a glob pattern: it holds ``*``, ``?`` or
    ``[`` and names no existing file (``batch[1].csv`` that exists is a file)."""
    return any(c in text for c in "*?[") and not os.path.exists(text)


def _is_parquet_name(text):
    return text.lower().endswith(PARQUET_EXTENSIONS)


def _walk(folder):
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            if _is_parquet_name(name) and not name.startswith((".", "_")):
                yield os.path.join(root, name)


def is_parquet_source(source):
    """Whether DATA ``source`` names Parquet data: a name ending in
    ``.parquet`` or ``.pq`` (a file, a folder or a glob pattern), a folder
    holding such files (at any depth, as partitioned datasets are written),
    or a glob pattern whose matches are all such files. This is the one
    test of the source's kind for tables; :func:`anomvae.images.is_image_source`
    asks it first, so a folder of Parquet files is never read as images.
    """
    if isinstance(source, (list, tuple)):
        return False
    text = str(source)
    if text == "-":
        return False
    if _is_parquet_name(text.rstrip("/" + os.sep)):
        return True
    if os.path.isdir(text):
        return next(_walk(text), None) is not None
    if is_pattern(text):
        matches = [p for p in glob.glob(text, recursive=True) if os.path.isfile(p)]
        return bool(matches) and all(_is_parquet_name(p) for p in matches)
    return False


def list_files(source):
    """The Parquet files of ``source``, in a stable order: a file alone; a
    folder's ``.parquet``/``.pq`` files at any depth, sorted by path (names
    starting with ``.`` or ``_``, such as ``_SUCCESS``, are left out); a
    glob pattern's matching files, sorted (``**`` recurses)."""
    text = str(source)
    if os.path.isdir(text):
        found = list(_walk(text))
        if not found:
            raise DataError(f"{text}: no Parquet files ({', '.join(PARQUET_EXTENSIONS)}) in this folder")
        return found
    if os.path.isfile(text):
        return [text]
    if is_pattern(text):
        found = sorted(p for p in glob.glob(text, recursive=True) if os.path.isfile(p))
        if found:
            return found
        raise DataError(f"{text}: the pattern matches no file")
    raise DataError(f"{text}: no such file or folder")


def _open(path):
    import pyarrow.parquet as pq

    try:
        # Streamed, not buffered: pyarrow's defaults read whole column chunks
        # ahead (pre_buffer) and decode a row group at once, which on a local
        # 1M x 20 file written as one row group took about 230 MB more peak
        # memory than 64 KiB page reads (about 80 MB), for no speed gain.
        return pq.ParquetFile(path, pre_buffer=False, buffer_size=_READ_BUFFER)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{path}: cannot be read as Parquet ({exc})") from None


def file_starts(source):
    """``(first_row, path)`` of each file of ``source``, in reading order:
    the 0-based data row at which each file starts (from the files' footers)."""
    starts, row = [], 0
    for path in list_files(source):
        starts.append((row, path))
        row += _open(path).metadata.num_rows
    return starts


def _numeric(kind):
    import pyarrow as pa

    types = pa.types
    return types.is_integer(kind) or types.is_floating(kind) or types.is_decimal(kind) or types.is_null(kind)


def _check_schema(schema, path, columns, text_columns):
    names = list(schema.names)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(f"{path}: the file has more than one column named {', '.join(map(quote, twice))}")
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(map(quote, missing))}")
    for column in columns:
        kind = schema.field(column).type
        if column not in text_columns and not _numeric(kind):
            raise DataError(f"{path}: column {quote(column)} is of Parquet type {kind}, not a number")


def _frame(batch, columns, text_columns, start):
    """A pandas frame of the record ``batch``: features as float64 (nulls
    as NaN), id columns in their Parquet type; indexed from ``start``."""
    import pyarrow as pa

    data = {}
    for column in columns:
        values = batch.column(column)
        if column in text_columns:
            data[column] = pd.Series(values.to_pandas(types_mapper=pd.ArrowDtype)).array
        else:
            data[column] = np.array(values.cast(pa.float64()).to_numpy(zero_copy_only=False))
    return pd.DataFrame(data, index=pd.RangeIndex(start, start + batch.num_rows), columns=list(columns))


def iter_parquet(source, *, columns, chunk_size, text_columns=()):
    """Stream the columns ``columns`` of Parquet ``source`` in chunks of at
    most ``chunk_size`` rows (a chunk never spans two files).

    Yields DataFrames indexed by the 0-based data row over the whole
    source. Raises :class:`DataError` naming the file when a column is
    missing or a feature column (one not in ``text_columns``) is not
    numeric, and when the source has no rows.
    """
    row = 0
    for path in list_files(source):
        handle = _open(path)
        _check_schema(handle.schema_arrow, path, columns, text_columns)
        try:
            for batch in handle.iter_batches(batch_size=chunk_size, columns=list(columns)):
                if batch.num_rows:
                    yield _frame(batch, columns, text_columns, row)
                    row += batch.num_rows
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot be read as Parquet ({exc})") from None
    if not row:
        raise DataError(f"{source}: the Parquet data has no rows")


def read_parquet(source, *, text_columns=(), chunk_size=65_536):
    """Read every column of Parquet ``source`` into one DataFrame, as
    :func:`anomvae.tables.read_csv` reads a CSV file: numeric columns as
    float64, id columns (``text_columns``) in their Parquet type, other
    columns (text, dates) as pandas reads them. Every file must have the
    first file's columns."""
    frames, row, columns = [], 0, None
    for path in list_files(source):
        handle = _open(path)
        schema = handle.schema_arrow
        if columns is None:
            columns = list(schema.names)
        _check_schema(schema, path, columns, columns)
        try:
            for batch in handle.iter_batches(batch_size=chunk_size, columns=columns):
                frames.append(_typed_frame(batch, columns, text_columns, row))
                row += batch.num_rows
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: cannot be read as Parquet ({exc})") from None
    if not row:
        raise DataError(f"{source}: the Parquet data has no rows")
    return pd.concat(frames) if len(frames) > 1 else frames[0]


def _typed_frame(batch, columns, text_columns, start):
    """Every column of ``batch``: numeric ones as float64, id columns as
    ``ArrowDtype``, the rest as pandas converts them."""
    converted = [c for c in columns if c in text_columns or _numeric(batch.schema.field(c).type)]
    frame = _frame(batch, converted, text_columns, start)
    for column in columns:
        if column not in converted:
            frame[column] = batch.column(column).to_pandas().to_numpy()
    return frame[columns]


def id_values(values, fmt):
    """An id column of a chunk as the results writer takes it: as typed for
    Parquet output; for text output, an object array with None where missing
    and dates and times in ISO format (as the JSON summary writes them)."""
    if fmt == "parquet" or not isinstance(values.dtype, pd.ArrowDtype):
        return values.array if fmt == "parquet" else values.to_numpy()
    cells = np.array(values.astype(object).to_numpy(), dtype=object)
    cells[np.asarray(values.isna())] = None
    if values.dtype.kind in "Mm" or pd.api.types.is_object_dtype(values.dtype.numpy_dtype):
        cells = np.array([v.isoformat() if hasattr(v, "isoformat") else v for v in cells], dtype=object)
    return cells

"""Scoring and fitting on Dask DataFrames: data larger than one machine.

Needs the optional extra: ``pip install 'anomvae[dask]'`` (``dask[dataframe]``,
``distributed``, ``pyarrow``). See ``docs/scale.md``.

:func:`score` adds the scores to a Dask DataFrame partition by partition
(``map_partitions``), on whatever scheduler computes it; :func:`fit` trains
a detector on a sample of one; :func:`score_to_parquet` is the work behind
``anomvae score --dask``. A row's score depends on that row alone, so the
scores are the same bits as in-memory scoring, however the rows are
partitioned.
"""

import contextlib
import glob
import logging
import os
import threading
import uuid
import warnings

import numpy as np
import pandas as pd

from .allocator import keep_freed_memory
from .calibration import score_shift
from .errors import DataError, OutputError, quote
from .files import staged_folder
from .parquet import is_parquet_source
from .persistence import load_for_scoring
from .results import TopScores, check_id_columns, json_value
from .scoring import BatchMonitor, _scores, _summary, feature_names

INSTALL_HINT = "pip install 'anomvae[dask]'"
logger = logging.getLogger("anomvae")

# Models loaded from files, in this (worker) process: loaded once per file
# version, not once per partition.
_MODELS = {}
_MODELS_LOCK = threading.Lock()


def _dask_dataframe():
    """``dask.dataframe``, or an ImportError saying how to install it."""
    try:
        import dask.dataframe
    except ImportError as exc:
        raise ImportError(f"anomvae.dask needs Dask: {INSTALL_HINT} ({exc})") from None
    return dask.dataframe


def require():
    """An ImportError naming the extra to install unless Dask and
    distributed are both importable."""
    import importlib

    for name in ("dask.dataframe", "distributed"):
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ImportError(f"{name} is not installed; {INSTALL_HINT} ({exc})") from None


def cached_model(path):
    """The model file at ``path`` loaded for scoring
    (:func:`~anomvae.persistence.load_for_scoring`), once per process for
    each version of the file (its path, modification time and size)."""
    path = os.path.abspath(path)
    info = os.stat(path)
    key = (path, info.st_mtime_ns, info.st_size)
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            for old in [k for k in _MODELS if k[0] == path]:
                del _MODELS[old]
            model = _MODELS[key] = load_for_scoring(path)
    return model


def _resolve(model):
    return cached_model(model) if isinstance(model, (str, os.PathLike)) else model


# The heap a worker keeps free for reuse: distributed trims it at 64 KiB so
# that a worker's memory reflects its data, which made every chunk's
# activations cost fresh pages (210k against 273k rows/s on 2M rows
# with these settings, 294k with a 256 MiB trim: decisions.md);
# 64 MiB is a few chunks' worth.
WORKER_TRIM_ABOVE = 64 << 20
_WORKER_READY = False  # whether this process is a worker set up by _set_up_worker


def _set_up_worker():
    """In a Dask worker process: one torch thread (its worker threads, not
    torch's, use the cores; torch threads on top compete for them) and
    freed memory kept for reuse up to 64 MiB
    (:func:`~anomvae.allocator.keep_freed_memory`).
    In-process schedulers leave the caller's process alone."""
    global _WORKER_READY
    if _WORKER_READY:
        return
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return
    import torch

    torch.set_num_threads(1)
    keep_freed_memory(trim_above=WORKER_TRIM_ABOVE)
    _WORKER_READY = True


def _output_meta(empty, id_columns, calibrated):
    meta = empty[id_columns].copy()
    meta["anomaly_score"] = pd.Series(dtype="float64")
    if calibrated:
        meta["p_value"] = pd.Series(dtype="float64")
    meta["is_anomaly"] = pd.Series(dtype="boolean")
    meta["status"] = pd.Series(dtype=object)
    return meta


def _check_columns(ddf, features, id_columns):
    """A DataError naming a missing feature or id column, or a feature column that is not numeric."""
    check_id_columns(id_columns)
    missing = [c for c in [*features, *id_columns] if c not in ddf.columns]
    if missing:
        raise DataError(f"the data lacks the column(s) {', '.join(map(quote, missing))} "
                        f"(columns: {', '.join(map(quote, map(str, ddf.columns)))})")
    for column in features:
        dtype = ddf.dtypes[column]
        if pd.api.types.is_bool_dtype(dtype) or not pd.api.types.is_numeric_dtype(dtype):
            raise DataError(f"column {quote(column)} holds {dtype} values, not numbers")


def score(model, ddf, *, threshold=None, id_columns=(), invalid_rows="mark"):
    """Anomaly scores of a Dask DataFrame's rows, as a lazy Dask DataFrame.

    Parameters
    ----------
    model : str, path-like, VAEAnomalyDetector or ScoringModel
        A model file, loaded once per worker process (and again only when
        the file changes), or a fitted model, sent to each worker once.
    ddf : dask.dataframe.DataFrame
        Columns are matched to the model's feature names; others are
        ignored. Feature columns must be numeric.
    threshold : float, default=None
        Anomaly-score cut in nats; ``None`` uses the model's ``threshold_``.
    id_columns : sequence of str, default=()
        Columns copied to the output, before the scores.
    invalid_rows : {"mark", "error"}, default="mark"
        Rows that cannot be scored (empty, NaN or infinite values, values
        outside the likelihood's domain or float32's range, see
        :meth:`~anomvae.preprocessing.Standardizer.unusable_rows`) get a NaN
        ``anomaly_score``, a missing ``is_anomaly`` and ``status``
        ``"not scored: why"``; ``"error"`` fails the computation with a
        :class:`~anomvae.errors.DataError` naming the partition and its rows.

    Returns
    -------
    dask.dataframe.DataFrame
        With the input's index and partitions: the id columns,
        ``anomaly_score`` (float64, the negative ELBO in nats), ``p_value``
        (calibrated models only), ``is_anomaly`` (nullable boolean) and
        ``status`` (``"scored"`` or ``"not scored: why"``). Nothing is
        computed until you compute or write it.

    Notes
    -----
    In a ``distributed`` worker, torch is pinned to one thread.
    """
    _dask_dataframe()
    if invalid_rows not in ("mark", "error"):
        raise ValueError(f"invalid_rows must be 'mark' or 'error', got {invalid_rows!r}")
    local = _resolve(model)
    features, id_columns = feature_names(local), list(id_columns)
    _check_columns(ddf, features, id_columns)
    cut = local.threshold_ if threshold is None else float(threshold)
    if not np.isfinite(cut):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    calibrated = getattr(local, "reference_scores_", None) is not None
    if not isinstance(model, (str, os.PathLike)):
        import dask

        # One copy in the graph, shipped once to each worker, not once per task.
        model = dask.delayed(model, name=f"anomvae-model-{uuid.uuid4().hex}")
    else:
        model = os.path.abspath(model)
    meta = _output_meta(ddf._meta, id_columns, calibrated)
    return ddf.map_partitions(_score_partition, model, features, id_columns, cut, invalid_rows == "mark",
                              meta=meta, align_dataframes=False)


def _score_partition(frame, model, features, id_columns, threshold, mark_invalid, partition_info=None):
    _set_up_worker()
    model = _resolve(model)
    X = frame[features].to_numpy(dtype=np.float64, na_value=np.nan)
    invalid, reasons = model.standardizer_.unusable_rows(X, features)
    # Marked here whatever the setting, so that the error below names the partition.
    scores, invalid, reasons = _scores(model, X, features, invalid, reasons, frame.index, None, True, None)
    if invalid.any() and not mark_invalid:
        where = f"partition {partition_info['number']}" if partition_info else "a partition"
        rows = ", ".join(map(str, frame.index[invalid][:10]))
        raise DataError(f"{where}: {int(invalid.sum())} row(s) cannot be scored, index {rows}"
                        f"{' ...' if invalid.sum() > 10 else ''} ({reasons[0]}); fix them or mark them")
    out = frame[id_columns].copy()
    out["anomaly_score"] = scores
    out = out.assign(**BatchMonitor(model, 0, False).p_values(scores, ~invalid))
    out["is_anomaly"] = pd.array(scores > threshold, dtype="boolean")
    out.loc[invalid, "is_anomaly"] = pd.NA
    status = np.full(len(X), "scored", dtype=object)
    status[invalid] = [f"not scored: {r}" for r in reasons]
    out["status"] = status
    return out


def fit(detector, ddf, *, columns=None, max_rows=100_000, random_state=None):
    """Fit ``detector`` on a sample of at most ``max_rows`` rows of ``ddf``.

    A VAE trains on rows in memory; a Dask DataFrame may not fit there. The
    rows are drawn uniformly without replacement (``ddf.sample`` at
    ``max_rows / len(ddf)``, then cut to ``max_rows``), computed onto this
    machine, and the detector is fitted on them as a pandas DataFrame, so its
    feature names are the columns. A :class:`UserWarning` gives the sample
    size when rows were left out; the row count costs one pass over ``ddf``.

    Parameters
    ----------
    detector : VAEAnomalyDetector
    ddf : dask.dataframe.DataFrame
        Rows without empty, NaN or infinite values (``ddf.dropna()``).
    columns : list of str, default=None
        Feature columns; ``None`` uses every column.
    max_rows : int, default=100000
    random_state : int, RandomState instance or None, default=None
        Seeds the sample (not the training: that is ``detector.random_state``).

    Returns
    -------
    detector
        Fitted.
    """
    _dask_dataframe()
    from sklearn.utils import check_random_state

    if int(max_rows) < 1:
        raise ValueError(f"max_rows must be at least 1, got {max_rows!r}")
    if columns is not None:
        ddf = ddf[list(columns)]
    total = len(ddf)
    rng = check_random_state(random_state)
    if total > max_rows:
        # A little above the target, so that the cut below rarely leaves fewer.
        frac = min(1.0, max_rows / total * 1.05 + 1e-6)
        sample = ddf.sample(frac=frac, random_state=int(rng.randint(2**31 - 1))).compute()
        if len(sample) > max_rows:
            sample = sample.sample(n=int(max_rows), random_state=rng)
        warnings.warn(f"anomvae.dask.fit trains on a random sample of {len(sample)} of the {total} rows "
                      f"(max_rows={max_rows})", UserWarning, stacklevel=2)
    else:
        sample = ddf.compute()
    logger.info("anomvae.dask.fit: training on %d of %d rows", len(sample), total)
    return detector.fit(sample)


def read(source, *, delimiter=",", decimal="."):
    """A Dask DataFrame of Parquet (``.parquet``/``.pq`` files, a folder or a
    glob of them) or CSV files (anything else), read lazily. A URL
    (``s3://...``) goes to Dask as it is; a local path or pattern that
    names nothing is a :class:`~anomvae.errors.DataError`."""
    dd = _dask_dataframe()
    text = str(source)
    if text == "-":
        raise DataError("Dask reads files its workers can open, not standard input")
    if "://" not in text and not glob.glob(text):
        raise DataError(f"{text}: no such file or folder, and no file matches it")
    if is_parquet_source(text) or os.path.isdir(text):
        return dd.read_parquet(text)
    return dd.read_csv(text, sep=delimiter, decimal=decimal)


@contextlib.contextmanager
def client(scheduler=None, *, n_workers=2, silence_logs=logging.ERROR):
    """A ``distributed.Client`` of the scheduler at ``scheduler``
    (``"tcp://host:8786"``), or of a new ``LocalCluster`` of ``n_workers``
    worker processes with one thread each, closed on exit; the local
    cluster's log messages below ``silence_logs`` are not shown."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        raise ImportError(f"anomvae.dask needs distributed: {INSTALL_HINT} ({exc})") from None
    if scheduler:
        with Client(scheduler) as connected:
            yield connected
        return
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=silence_logs) as cluster, Client(cluster) as connected:
        yield connected


def score_to_parquet(model, ddf, output, *, threshold=None, id_columns=(), invalid_rows="error", summary_top=10,
                     shift_test=False, before_commit=None):
    """Score ``ddf`` (see :func:`score`) into a new folder of Parquet files,
    one ``part.N.parquet`` per partition, and return the run's
    :class:`~anomvae.results.ScoringSummary`.

    With ``shift_test``, the summary holds the shift test of the scores
    against the model's calibration (else training) scores, as ``anomvae
    score`` computes it: every partition sends its scores (8 bytes a row)
    back to this process for it. ``before_commit(summary)`` is called once
    every partition is written and before the files are moved into
    ``output``: if it raises, nothing is left.

    Without ``id_columns`` a 1-based ``row`` column numbers the rows in
    partition order (which costs a pass over ``ddf`` to count them). The
    files are written into a hidden folder inside ``output`` and moved up
    only when every partition is written
    (:func:`anomvae.files.staged_folder`): a failed run leaves no file,
    and no ``output`` folder unless it was there. ``output`` must not hold
    files already.
    """
    _dask_dataframe()
    if os.path.exists(output) and (not os.path.isdir(output) or os.listdir(output)):
        raise OutputError(f"{os.path.abspath(output)} already exists; give a new folder for the Parquet files")
    local = _resolve(model)
    id_columns = list(id_columns)
    if not id_columns:
        if "row" in ddf.columns:
            raise DataError("the data has a 'row' column, the name of the row numbers written without id "
                            "columns; name the id column(s) to copy instead")
        counts = ddf.map_partitions(len).compute().tolist()
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        ddf = ddf.map_partitions(_number_rows, offsets, meta=ddf._meta.assign(row=np.int64(0)),
                                 align_dataframes=False)
        id_columns = ["row"]
    scored = score(model, ddf, threshold=threshold, id_columns=id_columns, invalid_rows=invalid_rows)
    summary = _summary(local, threshold)
    import dask

    with staged_folder(output, "Parquet files") as staging:
        tasks = [dask.delayed(_write_partition)(part, staging, i, summary.threshold, summary_top, shift_test)
                 for i, part in enumerate(scored.to_delayed())]
        scores = _add_up(summary, dask.compute(*tasks), summary_top)
        if shift_test:
            summary.score_shift = score_shift(scores, reference_scores=getattr(local, "reference_scores_", None),
                                              training_scores=getattr(local, "training_scores_", None))
        if before_commit is not None:
            before_commit(summary)
    return summary


def _add_up(summary, stats, summary_top):
    """Fill ``summary`` from the partitions' counts and top rows, in
    partition order, and return the scores they sent, one array."""
    top, seen, scores_sent = TopScores(summary_top), 0, []
    for rows, valid, anomalies, max_score, (scores, positions, identities), all_scores in stats:
        summary.rows += rows
        summary.rows_scored += valid
        summary.rows_not_scored += rows - valid
        summary.anomalies += anomalies
        if max_score is not None:
            summary.max_score = max_score if summary.max_score is None else max(summary.max_score, max_score)
        top.add(scores, seen + positions + 1, identities.__getitem__)
        seen += rows
        if all_scores is not None:
            scores_sent.append(all_scores)
    summary.top_anomalies = top.result()
    return np.concatenate(scores_sent) if scores_sent else np.empty(0)


def _number_rows(frame, offsets, partition_info=None):
    first = offsets[partition_info["number"]] if partition_info else 0
    return frame.assign(row=np.arange(first + 1, first + 1 + len(frame), dtype=np.int64))


def _write_partition(frame, folder, number, threshold, summary_top, send_scores=False):
    """Write one scored partition as ``part.NUMBER.parquet`` (complete or
    not at all: a retried task writes it again) and return its counts, top
    rows and (with ``send_scores``) the scores of its scored rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = os.path.join(folder, f"part.{number:06d}.parquet")
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), name + ".tmp")
    os.replace(name + ".tmp", name)
    scores = frame["anomaly_score"].to_numpy()
    valid = ~np.isnan(scores)
    candidates = np.argsort(-np.where(valid, scores, -np.inf), kind="stable")[:summary_top]
    candidates = candidates[valid[candidates]]
    ids = [c for c in frame.columns if c not in ("anomaly_score", "p_value", "is_anomaly", "status")]
    identities = [{c: json_value(frame[c].iloc[i]) for c in ids} for i in candidates]
    top = (scores[candidates], candidates, identities)
    return (len(frame), int(valid.sum()), int((valid & (scores > threshold)).sum()),
            float(scores[valid].max()) if valid.any() else None, top, scores[valid] if send_scores else None)

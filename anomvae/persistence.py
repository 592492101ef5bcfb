"""Model files: one zip archive holding JSON metadata and the weights.

Layout of a ``.anomvae`` file (the fields and format versions are declared
in :mod:`anomvae.schema`)::

    anomvae.json   format marker and version, anomvae version, estimator
                   parameters, fitted attributes (feature names, scaling,
                   threshold, training history, network configuration) and
                   caller-supplied extras
    weights.pt     the network's state_dict, written by torch.save

Loading reads the weights with ``torch.load(weights_only=True)``, which
unpickles tensors and plain containers only: a model file cannot make the
loader run code. Reading the metadata alone (:func:`read_metadata`) does not
import torch at all, so ``anomvae info`` stays fast.
"""

import copy
import io
import json
import os
import zipfile
import zlib
from datetime import datetime, timezone

from . import schema
from .errors import ModelFileError
from .files import atomic_write
from .version import __version__

METADATA_NAME = "anomvae.json"
WEIGHTS_NAME = "weights.pt"


def save(detector, path, *, extra=None):
    """Write a fitted :class:`~anomvae.VAEAnomalyDetector` to ``path``.

    The file is written beside its destination under a temporary name and
    renamed into place (:func:`anomvae.files.atomic_write`), so an
    interrupted save never leaves a partial model file, and an existing file
    is replaced only by a complete one.

    Parameters
    ----------
    detector : VAEAnomalyDetector
        A fitted detector.
    path : str or path-like
        Destination file.
    extra : dict, default=None
        JSON-serialisable information stored alongside (the command-line
        tool records the training file and its id columns here).

    Raises
    ------
    OutputError
        When ``path`` cannot be written.
    """
    import torch
    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(detector)
    metadata = {
        "format": schema.FORMAT,
        "format_version": schema.FORMAT_VERSION,
        "anomvae_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "estimator": type(detector).__name__,
        "params": schema.json_params(detector.get_params(deep=False)),
        "fitted": schema.encode_fitted(detector),
        "extra": extra or {},
    }
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in detector.module_.state_dict().items()}, buffer)
    with atomic_write(path, "wb") as handle:
        with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(METADATA_NAME, json.dumps(metadata, indent=1, allow_nan=True))
            archive.writestr(WEIGHTS_NAME, buffer.getvalue())


def _open(path):
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ModelFileError(f"{path}: is a directory, not an anomvae model file")
    try:
        archive = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such model file") from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ModelFileError(
            f"{path}: not an anomvae model file (not a complete zip archive: truncated, "
            f"corrupted or another format; {exc})"
        ) from None
    return archive


def _read_member(archive, path, name):
    try:
        return archive.read(name)
    except KeyError:
        raise ModelFileError(f"{path}: not an anomvae model file (it has no {name})") from None
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError) as exc:
        # zipfile checks each member's CRC-32 as it reads it.
        raise ModelFileError(f"{path}: corrupted model file ({name}: {exc})") from None


def _check_metadata(path, raw):
    try:
        metadata = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{path}: corrupted model file ({METADATA_NAME} is not valid JSON: {exc})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != schema.FORMAT:
        raise ModelFileError(f"{path}: not an anomvae model file (no '{schema.FORMAT}' marker in {METADATA_NAME})")
    version = metadata.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelFileError(f"{path}: corrupted model file (format_version is {version!r})")
    if version > schema.FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: written by anomvae {metadata.get('anomvae_version', '?')} in model format "
            f"{version}; this anomvae {__version__} reads format {schema.FORMAT_VERSION} at most. Upgrade anomvae."
        )
    for key in ("params", "fitted"):
        if not isinstance(metadata.get(key), dict):
            raise ModelFileError(f"{path}: corrupted model file ({METADATA_NAME} has no '{key}' section)")
    return schema.migrate(metadata)


def read_metadata(path):
    """Read and check a model file's metadata without loading its weights.

    Does not import torch. Files of older formats are upgraded to the
    current layout (:func:`anomvae.schema.migrate`).

    Returns
    -------
    metadata : dict
        ``format``, ``format_version``, ``anomvae_version``, ``created``,
        ``params``, ``fitted`` and ``extra``.

    Raises
    ------
    ModelFileError
        If ``path`` is not a readable anomvae model file of a supported
        format version.
    """
    with _open(path) as archive:
        return _check_metadata(path, _read_member(archive, path, METADATA_NAME))


def _load_parts(path):
    """Metadata and weights of a model file, checked."""
    import torch

    with _open(path) as archive:
        metadata = _check_metadata(path, _read_member(archive, path, METADATA_NAME))
        raw_weights = _read_member(archive, path, WEIGHTS_NAME)
    try:
        weights = torch.load(io.BytesIO(raw_weights), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for damaged data
        raise ModelFileError(f"{path}: corrupted model file ({WEIGHTS_NAME} cannot be read: {exc})") from None
    return metadata, weights


def _build(metadata, weights, scoring_only):
    from .fitted import ScoringModel, restore_network

    params = schema.estimator_params(metadata["params"])
    attributes = schema.decode_fitted(metadata["fitted"])
    attributes["module_"], attributes["device_"] = restore_network(
        attributes["network_config_"], weights, attributes["device_"]
    )
    if scoring_only:
        return ScoringModel(attributes, score_bound=params.get("score_bound", "elbo"))
    from .detector import VAEAnomalyDetector

    detector = VAEAnomalyDetector(**params)
    schema.set_fitted(detector, attributes)
    return detector


def load_with_metadata(path, *, scoring_only=False):
    """:func:`load` (or :func:`load_for_scoring` when ``scoring_only``) and
    :func:`read_metadata` of the same file, which is read once.  The
    metadata returned shares nothing with the model."""
    metadata, weights = _load_parts(path)
    try:
        model = _build(copy.deepcopy(metadata), weights, scoring_only)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise ModelFileError(f"{path}: corrupted model file (inconsistent contents: {exc})") from None
    return model, metadata


def load(path):
    """Load a model file written by :func:`save`.

    Returns
    -------
    detector : VAEAnomalyDetector
        The fitted detector, on the device it was trained on when available,
        else on the CPU.

    Raises
    ------
    ModelFileError
        If ``path`` is truncated, corrupted, not an anomvae model file, or
        of a newer format version than this anomvae reads.
    """
    return load_with_metadata(path)[0]


def load_for_scoring(path):
    """Load a model file for scoring only, without importing scikit-learn.

    Returns a :class:`~anomvae.fitted.ScoringModel`: the same scores,
    threshold and p-values as :func:`load`'s detector, in less time and
    memory, which is what ``anomvae score`` uses for CSV files.

    Raises
    ------
    ModelFileError
        As :func:`load`.
    """
    return load_with_metadata(path, scoring_only=True)[0]

"""Model files: one zip archive holding JSON metadata and the weights.

Layout of a ``.anomvae`` file (format version 3). Older files load as well:
version 1, written before the Gaussian likelihood's variance floor became
per-feature, and version 2, written before the ``trim_by`` parameter (both
trimmed by the loss). The version rises whenever the stored parameters
gain one, so that an older anomvae refuses a newer file by name instead of
failing on a parameter it does not know::

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

import contextlib
import copy
import io
import json
import os
import stat
import tempfile
import zipfile
import zlib
from datetime import datetime, timezone
from numbers import Integral

from . import __version__

FORMAT = "anomvae-model"
FORMAT_VERSION = 3
METADATA_NAME = "anomvae.json"
WEIGHTS_NAME = "weights.pt"


class ModelFileError(ValueError):
    """A file that cannot be read as an anomvae model."""


def _json_params(params):
    clean = {}
    for name, value in params.items():
        if isinstance(value, tuple):
            value = list(value)
        if name == "random_state" and not (value is None or isinstance(value, Integral)):
            value = None  # a RandomState instance has no faithful JSON form
        clean[name] = value
    return clean


def save(detector, path, *, extra=None):
    """Write a fitted :class:`~anomvae.VAEAnomalyDetector` to ``path``.

    The file is written beside its destination under a temporary name and
    renamed into place, so an interrupted save never leaves a partial model
    file, and an existing file is replaced only by a complete one.

    Parameters
    ----------
    detector : VAEAnomalyDetector
        A fitted detector.
    path : str or path-like
        Destination file.
    extra : dict, default=None
        JSON-serialisable information stored alongside (the command-line
        tool records the training file and its id columns here).
    """
    import torch

    fitted, weights = detector._fitted_state()
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "anomvae_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "estimator": type(detector).__name__,
        "params": _json_params(detector.get_params(deep=False)),
        "fitted": fitted,
        "extra": extra or {},
    }
    buffer = io.BytesIO()
    torch.save(weights, buffer)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".anomvae-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            with contextlib.suppress(OSError):  # some file systems keep no permissions
                os.fchmod(handle.fileno(), replacement_mode(path))
            with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as archive:
                archive.writestr(METADATA_NAME, json.dumps(metadata, indent=1, allow_nan=True))
                archive.writestr(WEIGHTS_NAME, buffer.getvalue())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def replacement_mode(path):
    """Permission bits for a file written under a temporary name and renamed
    to ``path``: those of the file it replaces, else what a plain ``open``
    would give (0o666 less the umask). ``mkstemp`` alone gives 0o600."""
    try:
        # Read and write bits only: setuid, setgid and sticky bits are not
        # carried over to a file this process now owns.
        return stat.S_IMODE(os.stat(path).st_mode) & 0o777
    except OSError:
        pass
    return 0o666 & ~_umask()


def _umask():
    # Reading the umask means setting it; /proc tells it without that
    # (Linux), so threads never see a changed umask there.
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an anomvae model file (no '{FORMAT}' marker in {METADATA_NAME})")
    version = metadata.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelFileError(f"{path}: corrupted model file (format_version is {version!r})")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: written by anomvae {metadata.get('anomvae_version', '?')} in model format "
            f"{version}; this anomvae {__version__} reads format {FORMAT_VERSION} at most. Upgrade anomvae."
        )
    for key in ("params", "fitted"):
        if not isinstance(metadata.get(key), dict):
            raise ModelFileError(f"{path}: corrupted model file ({METADATA_NAME} has no '{key}' section)")
    return metadata


def read_metadata(path):
    """Read and check a model file's metadata without loading its weights.

    Does not import torch.

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


def _rebuild(path, build):
    """The model ``build`` makes from a model file, and the file's metadata."""
    metadata, weights = _load_parts(path)
    try:
        return build(copy.deepcopy(metadata["params"]), copy.deepcopy(metadata["fitted"]), weights), metadata
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise ModelFileError(f"{path}: corrupted model file (inconsistent contents: {exc})") from None


def load_with_metadata(path, *, scoring_only=False):
    """:func:`load` (or :func:`load_for_scoring` when ``scoring_only``) and
    :func:`read_metadata` of the same file, which is read once.  The
    metadata returned shares nothing with the model."""
    if scoring_only:
        from .fitted import ScoringModel as build
    else:
        from .detector import VAEAnomalyDetector

        build = VAEAnomalyDetector._from_fitted_state
    return _rebuild(path, build)


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

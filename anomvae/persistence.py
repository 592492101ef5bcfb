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

A model file is untrusted input: before anything is decompressed the zip's
directory is held to the limits below (member count, sizes, compression
ratio), the metadata's nesting depth and every stored value are checked
(:mod:`anomvae.schema`), and the weights must be exactly the finite tensors
of the network the metadata describes before a network is built. Every
failure is one :class:`~anomvae.errors.ModelFileError` naming the file.
"""

import io
import json
import math
import os
import stat
import zipfile
import zlib
from datetime import datetime, timezone

from . import schema
from .errors import ModelFileError, quote
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
    TypeError
        When ``detector`` is not a :class:`~anomvae.VAEAnomalyDetector`, a
        :class:`~sklearn.pipeline.Pipeline` ending in one included: a model
        file holds the detector alone, never code such as other steps. Save
        the detector (``save(pipeline[-1], path)``) and rebuild the steps
        before it in your code, or save the whole pipeline with
        ``joblib.dump`` (a pickle: load only pickles you trust).
    OutputError
        When ``path`` cannot be written.
    ValueError
        When the model is larger than a model file may be (see the limits
        above), so that :func:`load` would refuse the file.
    """
    import torch
    from sklearn.utils.validation import check_is_fitted

    from .detector import VAEAnomalyDetector

    if not isinstance(detector, VAEAnomalyDetector):
        raise TypeError(_not_a_detector(detector))
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
    text = json.dumps(metadata, indent=1, allow_nan=True).encode()
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in detector.module_.state_dict().items()}, buffer)
    for name, size, limit in ((METADATA_NAME, len(text), MAX_METADATA_BYTES),
                              (WEIGHTS_NAME, buffer.tell(), MAX_WEIGHTS_BYTES)):
        if size > limit:
            # load() would refuse the file.
            raise ValueError(f"this model's {name} would take {size} bytes, over the model-file limit of {limit}")
    with atomic_write(path, "wb") as handle:
        with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(METADATA_NAME, text)
            archive.writestr(WEIGHTS_NAME, buffer.getvalue())


def _not_a_detector(obj):
    kind = type(obj).__name__
    if hasattr(obj, "steps"):
        return (f"anomvae.save writes a fitted VAEAnomalyDetector, not a {kind}: a model file holds no other "
                f"steps. Save the detector, anomvae.save(pipeline[-1], path), and rebuild the steps before it "
                f"in your code, or save the whole {kind} with joblib.dump(pipeline, path) (a pickle: load only "
                "pickles you trust).")
    return f"anomvae.save writes a fitted VAEAnomalyDetector, not a {kind}"


# Limits on what a model file may hold, checked from the zip's directory
# before anything is decompressed, so that a small hostile file cannot make
# the loader use gigabytes of memory. The largest real files are far below
# them: metadata grows by about 77 bytes per named Gaussian feature and 17
# per pixel of a Bernoulli image model (measured by saving models of 100
# and 5,000 features, and of 32x32x3 images), weights by 4 bytes per
# parameter. The metadata
# limits also bound what parsing it costs: with containers and strings
# limited in number, at most about 8 bytes of memory per byte of JSON.
MAX_MEMBERS = 16
MAX_METADATA_BYTES = 16 << 20
MAX_WEIGHTS_BYTES = 1 << 30
# Uncompressed over compressed size, for members above 1 MiB: weights hardly
# compress and metadata about 3:1, while a zip bomb compresses 1000:1.
MAX_COMPRESSION_RATIO = 50
MAX_JSON_DEPTH = 16
MAX_JSON_CONTAINERS = 100_000
MAX_JSON_STRINGS = 1_000_000
_READ_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)


def _damaged(path, detail):
    """The error for a damaged file: one line, however long ``detail`` is."""
    detail = " ".join(str(detail).split())
    if len(detail) > 300:
        detail = detail[:297] + "..."
    return ModelFileError(f"{path}: corrupted model file ({detail})")


def _open(path):
    path = os.fspath(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such model file") from None
    except OSError as exc:
        raise ModelFileError(f"{path}: cannot read the model file ({exc.strerror or exc})") from None
    if stat.S_ISDIR(mode):
        raise ModelFileError(f"{path}: is a directory, not an anomvae model file")
    if not stat.S_ISREG(mode):
        # A named pipe would block the reader forever, a device never end.
        raise ModelFileError(f"{path}: not a regular file (a pipe, socket or device), not an anomvae model file")
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise ModelFileError(
            f"{path}: not an anomvae model file (not a complete zip archive: truncated, "
            f"corrupted or another format; {quote(str(exc), 200)})"
        ) from None
    try:
        _check_members(path, archive)
    except BaseException:
        archive.close()
        raise
    return archive


def _check_members(path, archive):
    """Refuse a zip whose directory promises too much, before reading any member."""
    members = archive.infolist()
    if len(members) > MAX_MEMBERS:
        raise _damaged(path, f"{len(members)} zip members; a model file has at most {MAX_MEMBERS}")
    names = [info.filename for info in members]
    if len(set(names)) != len(names):
        raise _damaged(path, "a zip member name appears twice")
    total = 0
    for info in members:
        name, size = quote(info.filename), info.file_size
        limit = MAX_METADATA_BYTES if info.filename == METADATA_NAME else MAX_WEIGHTS_BYTES
        if size > limit:
            raise _damaged(path, f"{name} would decompress to {size} bytes; the limit is {limit}")
        if size > 1 << 20 and size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
            raise _damaged(path, f"{name} would decompress {info.compress_size} bytes to {size}, more than "
                                 f"{MAX_COMPRESSION_RATIO} times over; a model file compresses far less")
        if info.flag_bits & 0x1:
            raise _damaged(path, f"{name} is encrypted")
        if info.compress_type not in _READ_METHODS:
            raise _damaged(path, f"{name} uses zip compression method {info.compress_type}; "
                                 "model files are stored or deflated")
        total += size
    if total > MAX_METADATA_BYTES + MAX_WEIGHTS_BYTES:
        raise _damaged(path, f"its members would decompress to {total} bytes in all")


def _read_member(archive, path, name):
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise ModelFileError(f"{path}: not an anomvae model file (it has no {name})") from None
    try:
        with archive.open(info) as member:
            # Never more than the directory declared (and _check_members allowed).
            data = member.read(info.file_size + 1)
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, RuntimeError,
            NotImplementedError) as exc:
        # zipfile checks each member's CRC-32 as it reads it.
        raise _damaged(path, f"{name}: {exc}") from None
    if len(data) != info.file_size:
        raise _damaged(path, f"{name} holds {len(data)} bytes, not the {info.file_size} its zip entry declares")
    return data


def _json_depth(value):
    """How deeply lists and mappings nest in ``value``, counted without
    recursion and up to one more than the limit."""
    depth, level = 0, [value] if isinstance(value, (list, dict)) else []
    while level and depth <= MAX_JSON_DEPTH:
        depth += 1
        level = [child for item in level for child in (item.values() if isinstance(item, dict) else item)
                 if isinstance(child, (list, dict))]
    return depth


def _check_metadata(path, raw):
    # A container or a short string costs far more memory than its few bytes
    # of JSON: count them (brackets and quotes inside strings too, an
    # overestimate) before parsing.
    for what, count, limit in (("lists or mappings", raw.count(b"{") + raw.count(b"["), MAX_JSON_CONTAINERS),
                               ("strings", raw.count(b'"') // 2, MAX_JSON_STRINGS)):
        if count > limit:
            raise _damaged(path, f"{METADATA_NAME} holds {count} {what}; at most {limit} are allowed")
    try:
        metadata = json.loads(raw)
    except ValueError as exc:  # invalid JSON or text, an integer of thousands of digits
        raise _damaged(path, f"{METADATA_NAME} is not valid JSON: {exc}") from None
    except RecursionError:
        raise _damaged(path, f"{METADATA_NAME} nests deeper than {MAX_JSON_DEPTH} levels") from None
    if _json_depth(metadata) > MAX_JSON_DEPTH:
        raise _damaged(path, f"{METADATA_NAME} nests deeper than {MAX_JSON_DEPTH} levels")
    if not isinstance(metadata, dict) or metadata.get("format") != schema.FORMAT:
        raise ModelFileError(f"{path}: not an anomvae model file (no '{schema.FORMAT}' marker in {METADATA_NAME})")
    version = metadata.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _damaged(path, f"format_version is {quote(version)}")
    if version > schema.FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: written by anomvae {quote(metadata.get('anomvae_version', '?'), 20)} in model format "
            f"{version}; this anomvae {__version__} reads format {schema.FORMAT_VERSION} at most. Upgrade anomvae."
        )
    for key in ("params", "fitted"):
        if not isinstance(metadata.get(key), dict):
            raise _damaged(path, f"{METADATA_NAME} has no '{key}' section")
    try:
        schema.check_extra(metadata.setdefault("extra", {}))
        metadata = schema.migrate(metadata)
        # Every stored value is checked here, so that anything reading the
        # metadata (anomvae info too) reads values of the right types.
        attributes = schema.decode_fitted(metadata["fitted"])
    except (ValueError, TypeError) as exc:
        raise _damaged(path, exc) from None
    return metadata, attributes


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
        return _check_metadata(path, _read_member(archive, path, METADATA_NAME))[0]


def _load_parts(path):
    """Metadata, its decoded fitted attributes and the weights of a model file, checked."""
    import torch

    from .model import state_shapes

    with _open(path) as archive:
        metadata, attributes = _check_metadata(path, _read_member(archive, path, METADATA_NAME))
        # The described network's float32 weights must fit in what weights.pt
        # holds, before a byte of it is read: so a network is never built
        # larger than the file's own (bounded) weights.
        config = attributes["network_config_"]
        needed = 4 * sum(math.prod(shape) for shape in state_shapes(config).values())
        if WEIGHTS_NAME in archive.namelist() and archive.getinfo(WEIGHTS_NAME).file_size < needed:
            raise _damaged(path, f"module_config describes a network of {needed} bytes of weights, but "
                                 f"{WEIGHTS_NAME} holds {archive.getinfo(WEIGHTS_NAME).file_size} bytes")
        raw_weights = _read_member(archive, path, WEIGHTS_NAME)
    try:
        weights = torch.load(io.BytesIO(raw_weights), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for damaged data
        raise _damaged(path, f"{WEIGHTS_NAME} cannot be read: {exc}") from None
    return metadata, attributes, weights


def _check_weights(config, weights):
    """Refuse weights that are not exactly the network ``config`` describes,
    or not finite, before a network is built for them."""
    import torch

    from .model import state_shapes

    # float32 as anomvae saves them (a float64 weight could overflow when
    # cast), each in a storage of its own size (an expanded view of one
    # number would pass for a huge tensor until it is copied).
    if not isinstance(weights, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) and v.dtype == torch.float32 and v.is_contiguous()
        and v.untyped_storage().nbytes() >= 4 * v.numel() for k, v in weights.items()
    ):
        raise ValueError(f"{WEIGHTS_NAME} is not a mapping of names to contiguous float32 tensors")
    expected = state_shapes(config)
    for name in sorted(set(expected) ^ set(weights)):
        where = "module_config's network has no" if name in weights else f"{WEIGHTS_NAME} lacks the"
        raise ValueError(f"{where} tensor {quote(name)}")
    for name, shape in expected.items():
        if tuple(weights[name].shape) != shape:
            raise ValueError(f"{WEIGHTS_NAME}'s {name} has shape {list(weights[name].shape)}, "
                             f"but module_config's network needs {list(shape)}")
        if not torch.isfinite(weights[name]).all():
            raise ValueError(f"{WEIGHTS_NAME}'s {name} holds NaN or infinite values")


def _build(metadata, attributes, weights, scoring_only):
    from .fitted import ScoringModel, restore_network

    params = schema.estimator_params(metadata["params"])
    _check_weights(attributes["network_config_"], weights)
    if scoring_only:
        score_bound = params.get("score_bound", "elbo")
        if score_bound not in ("elbo", "iwae"):
            raise ValueError(f"params.score_bound {quote(score_bound)} is not elbo or iwae")
    else:
        from .detector import VAEAnomalyDetector

        unknown = sorted(set(params) - set(VAEAnomalyDetector().get_params()))
        if unknown:
            raise ValueError(f"params has unknown entries {quote(unknown)}")
        detector = VAEAnomalyDetector(**params)
        try:
            detector.check_params()
        except ValueError as exc:
            raise ValueError(f"params: {exc}") from None
    attributes["module_"], attributes["device_"] = restore_network(
        attributes["network_config_"], weights, attributes["device_"]
    )
    if scoring_only:
        return ScoringModel(attributes, score_bound=score_bound)
    schema.set_fitted(detector, attributes)
    return detector


def load_with_metadata(path, *, scoring_only=False):
    """:func:`load` (or :func:`load_for_scoring` when ``scoring_only``) and
    :func:`read_metadata` of the same file, which is read once.  The
    metadata returned shares nothing with the model."""
    metadata, attributes, weights = _load_parts(path)
    try:
        # Building reads the metadata and copies what it keeps (arrays,
        # tuples): the model shares nothing with the metadata returned.
        model = _build(metadata, attributes, weights, scoring_only)
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
        raise _damaged(path, f"inconsistent contents: {exc}") from None
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

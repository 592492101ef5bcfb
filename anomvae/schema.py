"""The model-file schema: what a fitted model stores, and older layouts.

A model file's metadata holds the estimator's parameters and the fitted
attributes declared in :data:`FIELDS`, each with its JSON encoding.
:func:`migrate` upgrades the metadata of any supported older format (and
:func:`migrate_pickled_state` an old pickle's state) to the current layout
before anything reads it, so no other module knows old layouts.

Format versions: 1 stored one variance floor for every feature; 2 stored
one per feature, and files up to 2 were trained before ``trim_by`` existed,
trimming by the loss; 3 adds ``trim_by`` and ``refit_inliers``. The
version rises whenever the stored parameters gain one, so that an older
anomvae refuses a newer file by name instead of failing on a parameter it
does not know. A fitted attribute added later needs no new version (older
anomvae ignores it): ``_ADDED_LATER`` says what it means in files that lack
it, such as ``kl_per_dim_`` and ``active_units_`` (None: not recorded).
"""

import copy
import math
import re
from dataclasses import dataclass
from numbers import Integral

import numpy as np

from .config import NetworkConfig
from .errors import quote
from .history import TrainingHistory
from .preprocessing import DEFAULT_MIN_VARIANCE

FORMAT = "anomvae-model"
FORMAT_VERSION = 3


def _floats(values):
    return [float(v) for v in values]


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(value):
    """A finite number from a file: the wrong type or NaN/infinity is refused."""
    if not _is_number(value) or not math.isfinite(value):
        raise ValueError(f"{quote(value)} is not a finite number")
    return float(value)


def _count(minimum):
    def decode(value):
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise ValueError(f"{quote(value)} is not an integer of at least {minimum}")
        return value
    return decode


def _array(values, positive=False, nonempty=False):
    """Finite numbers from a file (positive ones where scales are; at least
    one where an empty list would mean something else)."""
    if not isinstance(values, list) or not all(_is_number(v) for v in values) or (nonempty and not values):
        raise ValueError(f"{quote(values)} is not a list of {'one or more ' * nonempty}numbers")
    array = np.asarray(values, dtype=np.float64)
    bad = ~np.isfinite(array) | (array <= 0 if positive else False)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{quote(values[i])} at position {i} is not a {'positive ' * positive}finite number")
    return array


def _fpr(value):
    if not 0 < _number(value) < 1:
        raise ValueError(f"{quote(value)} is not a rate between 0 and 1")
    return float(value)


def _names(values):
    if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
        raise ValueError(f"{quote(values)} is not a list of names")
    return np.asarray(values, dtype=object)


def _shape(values):
    if not isinstance(values, list) or len(values) != 3:
        raise ValueError(f"{quote(values)} is not (channels, height, width)")
    return tuple(_count(1)(v) for v in values)


def _device(value):
    if not isinstance(value, str) or not re.fullmatch(r"(cpu|cuda|mps)(:\d{1,3})?", value):
        raise ValueError(f"{quote(value)} is not cpu, cuda, cuda:N or mps")
    return value


def _optional(decode):
    return lambda value: None if value is None else decode(value)


def _history_to_json(history):
    # Epochs with nothing monitored hold NaN; JSON has no NaN.
    return {k: [None if v != v else v for v in values] for k, values in history.to_dict().items()}


def _history_from_json(values):
    values = values or {}
    names = TrainingHistory.names()
    if not isinstance(values, dict) or not set(values) <= set(names):
        raise ValueError(f"{quote(values)} is not a mapping of {', '.join(names)}")
    for key, column in values.items():
        if not isinstance(column, list) or not all(v is None or _is_number(v) for v in column):
            raise ValueError(f"{key} {quote(column)} is not a list of numbers")
    return TrainingHistory.from_dict({k: [math.nan if v is None else v for v in vs] for k, vs in values.items()})


@dataclass(frozen=True)
class Field:
    """A stored fitted attribute: its name, JSON key, and codecs."""

    name: str
    encode: object
    decode: object
    key: str = None
    # Left unset on the model when None (as scikit-learn leaves
    # feature_names_in_ unset for arrays without column names).
    unset_when_none: bool = False

    @property
    def json_key(self):
        return self.key or self.name


FIELDS = (
    Field("n_features_in_", int, _count(1)),
    Field("feature_names_in_", _optional(lambda names: [str(n) for n in names]), _optional(_names),
          unset_when_none=True),
    Field("center_", _floats, _array),
    Field("scale_", _floats, lambda values: _array(values, positive=True)),
    Field("offset_", float, _number),
    Field("training_scores_", _floats, _array),
    Field("reference_scores_", _optional(_floats), _optional(lambda values: _array(values, nonempty=True))),
    Field("calibration_fpr_", _optional(float), _optional(_fpr)),
    Field("threshold_", float, _number),
    Field("latent_dim_", int, _count(1)),
    Field("image_shape_", _optional(list), _optional(_shape)),
    Field("history_", _history_to_json, _history_from_json),
    Field("n_epochs_", int, _count(0)),
    Field("best_epoch_", int, _count(0)),
    Field("batch_size_", _optional(int), _optional(_count(1))),
    Field("n_refit_excluded_", _optional(int), _optional(_count(0))),
    Field("kl_per_dim_", _optional(_floats), _optional(_array)),
    Field("active_units_", _optional(int), _optional(_count(0))),
    Field("device_", str, _device),
    Field("network_config_", NetworkConfig.to_dict, NetworkConfig.from_dict, key="module_config"),
)

# Stored fitted attributes that older files lack, and what they mean there:
# no calibration, no refit, not an image model, no training scores kept,
# batch size and latent usage (posterior-collapse diagnosis) not recorded.
_ADDED_LATER = {
    "training_scores_": [], "reference_scores_": None, "calibration_fpr_": None,
    "image_shape_": None, "n_refit_excluded_": None, "batch_size_": None,
    "kl_per_dim_": None, "active_units_": None,
}


def json_params(params):
    """Estimator parameters in JSON form (tuples as lists; a RandomState
    instance, which has no faithful JSON form, as None)."""
    clean = {}
    for name, value in params.items():
        if isinstance(value, tuple):
            value = list(value)
        if name == "random_state" and not (value is None or isinstance(value, Integral)):
            value = None
        clean[name] = value
    return clean


def estimator_params(params):
    """Estimator parameters from their JSON form (lists back to tuples)."""
    params = dict(params)
    for name in ("hidden_dims", "image_shape"):
        if isinstance(params.get(name), list):
            params[name] = tuple(params[name])
    return params


def encode_fitted(model):
    """A fitted model's stored attributes as JSON-serialisable values."""
    return {field.json_key: field.encode(getattr(model, field.name, None)) for field in FIELDS}


def decode_fitted(fitted):
    """The attributes stored in a (migrated) ``fitted`` section, checked
    against each other, plus ``min_variance_`` (from the network's
    configuration). Raises KeyError, TypeError or ValueError on a file whose
    contents are missing or inconsistent."""
    attributes = {}
    for field in FIELDS:
        if field.json_key not in fitted:
            raise ValueError(f"fitted.{field.json_key} is missing")
        try:
            attributes[field.name] = field.decode(fitted[field.json_key])
        except (ValueError, TypeError) as exc:
            raise ValueError(f"fitted.{field.json_key}: {exc}") from None
    config = attributes["network_config_"]
    attributes["min_variance_"] = config.variance_floors()
    # A file edited or damaged by hand could hold arrays of other lengths,
    # which numpy would broadcast into wrong scores without a word.
    n_features = config.n_features
    if attributes["n_features_in_"] != n_features:
        raise ValueError(f"n_features_in_ is {attributes['n_features_in_']}, the network has {n_features} inputs")
    for name in ("center_", "scale_"):
        if attributes[name].shape != (n_features,):
            raise ValueError(f"{name} holds {attributes[name].size} values for {n_features} features")
    names = attributes["feature_names_in_"]
    if names is not None and len(names) != n_features:
        raise ValueError(f"feature_names_in_ holds {len(names)} names for {n_features} features")
    if attributes["latent_dim_"] != config.latent_dim or attributes["image_shape_"] != config.image_shape:
        raise ValueError("latent_dim_ or image_shape_ differs from the network's")
    kl, active = attributes["kl_per_dim_"], attributes["active_units_"]
    if (kl is None) != (active is None) or kl is not None and (kl.shape != (config.latent_dim,)
                                                               or active > config.latent_dim):
        raise ValueError(f"kl_per_dim_ and active_units_ do not describe the {config.latent_dim} latent units")
    if attributes["offset_"] != -attributes["threshold_"]:
        raise ValueError(f"offset_ {attributes['offset_']!r} is not minus threshold_ {attributes['threshold_']!r}")
    return attributes


def check_extra(extra):
    """Raise ValueError unless a model file's ``extra`` section has the
    types the command-line tool reads from it."""
    if not isinstance(extra, dict):
        raise ValueError(f"extra {quote(extra)} is not a mapping")
    ids = extra.get("id_columns", [])
    if not isinstance(ids, list) or not all(isinstance(c, str) for c in ids):
        raise ValueError(f"extra.id_columns {quote(ids)} is not a list of column names")
    if extra.get("input", "csv") not in ("csv", "images"):
        raise ValueError(f"extra.input {quote(extra['input'])} is not csv or images")
    for key in ("training", "images"):
        if not isinstance(extra.get(key, {}), dict):
            raise ValueError(f"extra.{key} {quote(extra[key])} is not a mapping")


def id_columns_of(metadata, given=()):
    """The id columns to copy to results: those ``given``, else those the
    model file's metadata records (from ``fit --id-column``), else none."""
    return list(given) or list((metadata or {}).get("extra", {}).get("id_columns", []))


def set_fitted(model, attributes):
    """Set :func:`decode_fitted`'s attributes on ``model``."""
    unset = {field.name for field in FIELDS if field.unset_when_none}
    for name, value in attributes.items():
        if not (value is None and name in unset):
            setattr(model, name, value)


def migrate(metadata):
    """A copy of a model file's metadata, upgraded from any supported format
    to the current layout. ``format_version`` still says which format the
    file was written in. Damaged contents are left for
    :func:`decode_fitted` to reject."""
    # Copies of the mappings this changes; the (possibly large) values are
    # only read, so they are shared.
    metadata = dict(metadata)
    params = metadata["params"] = dict(metadata["params"])
    fitted = metadata["fitted"] = dict(metadata["fitted"])
    # The first files of format 1 predate trimming: every row was trained on.
    params.setdefault("trim_fraction", 0.0)
    # Before trim_by existed (formats 1 and 2), batches were trimmed by the loss.
    params.setdefault("trim_by", "loss")
    # Before the architecture option existed, every network was an MLP.
    params.setdefault("architecture", "mlp")
    for key, value in _ADDED_LATER.items():
        fitted.setdefault(key, copy.deepcopy(value))
    config = fitted.get("module_config")
    if isinstance(config, dict):
        floor = config.get("min_variance")
        if "min_variance" not in params and config.get("likelihood") == "gaussian" and isinstance(floor, (int, float)):
            # Format 1 predates the min_variance parameter: its one floor,
            # stored in the network's configuration, is what was used.
            params["min_variance"] = float(floor)
        fitted["module_config"] = _migrate_config(config)
    return metadata


def _migrate_config(config):
    """A network configuration in the current layout: the architecture and
    draw count spelled out, and the floors one per feature (format 1 held
    one for all), for the Gaussian likelihood only."""
    config = {"architecture": "mlp", "n_score_samples": 1, **config}
    if config.get("likelihood") != "gaussian":
        config.pop("min_variance", None)
    else:
        floor = config.get("min_variance", DEFAULT_MIN_VARIANCE)
        if isinstance(floor, (int, float)) and isinstance(config.get("n_features"), int):
            config["min_variance"] = [float(floor)] * config["n_features"]
    return config


def migrate_pickled_state(state):
    """The ``__dict__`` of a pickled estimator, upgraded to the current
    layout: pickles from before ``min_variance`` had one floor, 1e-3, for
    every Gaussian feature; those from before ``trim_by`` trimmed by the
    loss; older ones kept the network's configuration and history as
    dicts; fitted ones from before ``kl_per_dim_`` and ``active_units_``
    have None for both."""
    state = dict(state)
    if "min_variance" not in state:
        state["min_variance"] = DEFAULT_MIN_VARIANCE if state.get("likelihood") == "gaussian" else "auto"
    state.setdefault("trim_by", "loss")
    if "offset_" in state:  # fitted, before the posterior-collapse diagnosis was recorded
        state.setdefault("kl_per_dim_", None)
        state.setdefault("active_units_", None)
    config = state.pop("_module_config", None)
    if config is not None:
        state["network_config_"] = NetworkConfig.from_dict(_migrate_config(config))
        state.setdefault("min_variance_", state["network_config_"].variance_floors())
    if isinstance(state.get("history_"), dict):
        state["history_"] = TrainingHistory.from_dict(state["history_"])
    return state

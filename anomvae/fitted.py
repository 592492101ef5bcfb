"""Inference with a fitted VAE, without scikit-learn.

Functions for what scoring needs once a model is trained: the scaling, the
network run on fixed-height chunks, the anomaly score and the conformal
p-values. :class:`~anomvae.VAEAnomalyDetector` delegates to them, and
:class:`ScoringModel` uses them alone, so that ``anomvae score`` on a CSV file
does not pay for importing scikit-learn (SciPy is imported only at the end,
for the batch's shift test).
"""

import warnings

import numpy as np
import torch

from .floors import variance_floors
from .model import build_vae, conv_plan

# Scoring runs the network on chunks of one fixed height per model, copied
# into freshly allocated buffers and padded with zeros.  Matrix-multiply
# kernels pick their algorithm (and so their summation order) by matrix shape
# and memory alignment, so a row's last bits could otherwise depend on how
# many rows share its call and where numpy placed them; with every call the
# same shape and alignment a row's score is bit-for-bit the same in any batch.
_MIN_CHUNK_ROWS = 16
_MAX_CHUNK_ROWS = 2048
# Target number of floats in one chunk's widest activation tensor.
_CHUNK_BUDGET = 1 << 20


def check_domain(X, likelihood):
    """Raise ValueError when ``X`` has values outside [0, 1] for a likelihood
    that needs them there (Bernoulli, continuous Bernoulli)."""
    if likelihood != "gaussian" and X.size and (X.min() < 0 or X.max() > 1):
        column = int(np.flatnonzero((X < 0).any(axis=0) | (X > 1).any(axis=0))[0])
        raise ValueError(
            f"likelihood={likelihood!r} needs values in [0, 1]; "
            f"column {column} holds values in [{X[:, column].min():g}, {X[:, column].max():g}]"
        )


# The functions below work on any object holding a fitted model's
# attributes (``center_``, ``scale_``, ``module_``, ``latent_dim_``,
# ``_module_config``, ``reference_scores_``, ``score_bound`` ...): the
# estimator and ScoringModel both delegate to them.


def check_float32_range(X, usable=None):
    """Raise ValueError naming the first value of ``X`` that float32, the
    network's precision, cannot hold (``usable`` False there; by default
    values beyond about 3.4e38): it would become an infinity and its score NaN."""
    largest = np.finfo(np.float32).max
    if usable is None:
        if not X.size or max(X.max(), -X.min()) <= largest:  # no copy of X when all is well
            return
        usable = np.abs(X) <= largest
    if not usable.all():
        row, column = np.argwhere(~usable)[0]
        where = "" if abs(X[row, column]) > largest else " once standardised"
        raise ValueError(
            f"X[{row}, {column}] = {X[row, column]:g} is too large for the model: the network computes in "
            f"float32, whose range (about {largest:.1e}) it leaves{where}"
        )


def scale(model, X):
    """``X`` standardised and in float32, the network's precision."""
    with np.errstate(over="ignore"):
        scaled = ((X - model.center_) / model.scale_).astype(np.float32)
    check_float32_range(X, np.isfinite(scaled))
    return scaled


def chunk_rows(model, width):
    per_row = max(1, model.module_.score_noise.shape[0] * width)
    return int(np.clip(_CHUNK_BUDGET // per_row, _MIN_CHUNK_ROWS, _MAX_CHUNK_ROWS))


def map_scaled(model, fn, X):
    """Apply ``fn`` to row chunks of the float32 array or tensor ``X``.

    ``fn`` maps a (n, ...) tensor to a tensor or a tuple of tensors with
    n rows; the results come back concatenated as float64 numpy arrays.
    Every chunk is padded to the same height, so that a row's result
    does not depend on its neighbours.
    """
    widths = [X.shape[1], model.latent_dim_, *model._module_config["hidden_dims"]]
    if model._module_config.get("image_shape"):
        channels, sizes = conv_plan(model._module_config["image_shape"])
        widths += [c * h * w for c, (h, w) in zip(channels, sizes)]
    step = chunk_rows(model, max(widths))
    device = model.module_.score_noise.device
    outputs = []
    with torch.inference_mode():
        for start in range(0, X.shape[0], step):
            rows = torch.as_tensor(X[start:start + step])
            n = rows.shape[0]
            # A fresh buffer from torch's allocator: aligned memory and
            # one shape for every call (see _MIN_CHUNK_ROWS).
            chunk = torch.zeros((step, *rows.shape[1:]), device=device)
            chunk[:n] = rows
            result = fn(chunk)
            result = result if isinstance(result, tuple) else (result,)
            outputs.append([r[:n].double().cpu().numpy() for r in result])
    merged = tuple(np.concatenate(parts) for parts in zip(*outputs))
    return merged if len(merged) > 1 else merged[0]


def score_samples(model, X):
    # Change of variables from the scaled features back to the data's units.
    log_jacobian = -np.log(model.scale_).sum()
    if model.score_bound == "iwae":
        return map_scaled(model, model.module_.importance_weighted_elbo, scale(model, X)) + log_jacobian
    reconstruction, kl = map_scaled(model, model.module_.score_terms, scale(model, X))
    return -(reconstruction + kl) + log_jacobian


def p_values_of_scores(model, anomaly_scores):
    """P-values of anomaly scores (negative ELBO) already computed."""
    reference = model.reference_scores_
    n_at_or_above = reference.size - np.searchsorted(reference, anomaly_scores, side="left")
    return (1 + n_at_or_above) / (reference.size + 1)


def set_fitted_state(model, fitted, weights):
    """Restore onto ``model`` the fitted attributes that
    ``VAEAnomalyDetector._fitted_state`` wrote."""
    fitted = dict(fitted)
    model._module_config = fitted.pop("module_config")
    names = fitted.pop("feature_names_in_")
    if names is not None:
        model.feature_names_in_ = np.asarray(names, dtype=object)
    model.center_ = np.asarray(fitted.pop("center_"), dtype=np.float64)
    model.scale_ = np.asarray(fitted.pop("scale_"), dtype=np.float64)
    model.min_variance_ = variance_floors(model._module_config)
    # Model files written before image models existed have no image_shape_.
    shape = fitted.pop("image_shape_", None)
    model.image_shape_ = None if shape is None else tuple(shape)
    # Files written before calibration existed lack these three.
    model.training_scores_ = np.asarray(fitted.pop("training_scores_", []), dtype=np.float64)
    reference = fitted.pop("reference_scores_", None)
    model.calibration_fpr_ = fitted.pop("calibration_fpr_", None)
    model.reference_scores_ = None if reference is None else np.asarray(reference, dtype=np.float64)
    # Files written before refit_inliers existed had no refit.
    model.n_refit_excluded_ = fitted.pop("n_refit_excluded_", None)
    history = fitted.pop("history_", None)
    if history is not None:
        model.history_ = {k: [float("nan") if v is None else v for v in values] for k, values in history.items()}
    for name, value in fitted.items():
        setattr(model, name, value)
    # A file edited or damaged by hand could hold arrays of other lengths,
    # which numpy would broadcast into wrong scores without a word.
    n_features = model._module_config["n_features"]
    if getattr(model, "n_features_in_", n_features) != n_features:
        raise ValueError(f"n_features_in_ is {model.n_features_in_}, the network has {n_features} inputs")
    for name in ("center_", "scale_"):
        if getattr(model, name).shape != (n_features,):
            raise ValueError(f"{name} holds {getattr(model, name).size} values for {n_features} features")
    if names is not None and len(names) != n_features:
        raise ValueError(f"feature_names_in_ holds {len(names)} names for {n_features} features")
    model.module_ = restore_module(model, weights)


def restore_module(model, module_state):
    device = model.device_
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        warnings.warn(
            f"this model was trained on {device}, which is not available; using the CPU",
            UserWarning,
        )
        device = model.device_ = "cpu"
    module = build_vae(model._module_config)
    module.load_state_dict(module_state)
    return module.to(device).eval()


class ScoringModel:
    """A model file loaded for scoring only (see
    :func:`anomvae.persistence.load_for_scoring`).

    :meth:`score_samples` gives exactly the scores of the
    :class:`~anomvae.VAEAnomalyDetector` it was saved from (the same network
    and the same fixed latent draws, so the same bits), and the fitted
    attributes ``threshold_``, ``offset_``, ``reference_scores_`` and
    ``feature_names_in_`` are there; but it is not an estimator: it cannot
    be refitted, cloned or put in a pipeline.
    """

    def __init__(self, params, fitted, weights):
        self.score_bound = params.get("score_bound", "elbo")
        set_fitted_state(self, fitted, weights)

    def _check_features(self, X):
        names = getattr(self, "feature_names_in_", None)
        if hasattr(X, "columns") and names is not None:
            missing = [n for n in names if n not in X.columns]
            if missing:
                raise ValueError(f"X lacks the feature column(s) {', '.join(map(repr, missing))}")
            if list(X.columns) != list(names):
                X = X[list(names)]
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_ or not len(X):
            raise ValueError(
                f"X has shape {X.shape}, but this model scores one or more rows of {self.n_features_in_} features"
            )
        if not np.isfinite(X).all():
            raise ValueError("X holds NaN or infinite values")
        check_domain(X, self._module_config["likelihood"])
        return X

    def score_samples(self, X):
        """ELBO of each row, in nats, as
        :meth:`anomvae.VAEAnomalyDetector.score_samples`. A DataFrame's
        columns are matched to ``feature_names_in_`` by name."""
        return score_samples(self, self._check_features(X))

    def _p_values_of_scores(self, anomaly_scores):
        return p_values_of_scores(self, anomaly_scores)

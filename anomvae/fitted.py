"""Inference with a fitted VAE, without scikit-learn.

:class:`FittedVAE` holds what scoring needs once a model is trained: the
scaling, the network run on fixed-height chunks, the anomaly score and the
conformal p-values. :class:`~anomvae.VAEAnomalyDetector` inherits it, and
:class:`ScoringModel` uses it alone, so that ``anomvae score`` on a CSV file
does not pay for importing scikit-learn and SciPy.
"""

import warnings

import numpy as np
import torch

from .model import build_vae, conv_plan

# Scoring runs the network on chunks of one fixed height per model, copied
# into freshly allocated buffers and padded with zeros.  Matrix-multiply
# kernels pick their algorithm (and so their summation order) by matrix shape
# and memory alignment, so a row's last bits could otherwise depend on how
# many rows share its call and where numpy placed them; with every call the
# same shape and alignment a row's score is bit-for-bit the same in any batch.
_MIN_CHUNK_ROWS = 16
_MAX_CHUNK_ROWS = 1024
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


class FittedVAE:
    """Scoring methods shared by every fitted anomvae model.

    Expects the fitted attributes that :meth:`_set_fitted_state` restores
    (``center_``, ``scale_``, ``module_``, ``threshold_`` ...) and a
    ``score_bound`` attribute.
    """

    def _scale(self, X):
        return ((X - self.center_) / self.scale_).astype(np.float32)

    def _chunk_rows(self, width):
        per_row = max(1, self.module_.score_noise.shape[0] * width)
        return int(np.clip(_CHUNK_BUDGET // per_row, _MIN_CHUNK_ROWS, _MAX_CHUNK_ROWS))

    def _map_scaled(self, fn, X):
        """Apply ``fn`` to row chunks of the float32 array or tensor ``X``.

        ``fn`` maps a (n, ...) tensor to a tensor or a tuple of tensors with
        n rows; the results come back concatenated as float64 numpy arrays.
        Every chunk is padded to the same height, so that a row's result
        does not depend on its neighbours.
        """
        widths = [X.shape[1], self.latent_dim_, *self._module_config["hidden_dims"]]
        if self._module_config.get("image_shape"):
            channels, sizes = conv_plan(self._module_config["image_shape"])
            widths += [c * h * w for c, (h, w) in zip(channels, sizes)]
        step = self._chunk_rows(max(widths))
        device = self.module_.score_noise.device
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

    def _score_samples(self, X):
        # Change of variables from the scaled features back to the data's units.
        log_jacobian = -np.log(self.scale_).sum()
        if self.score_bound == "iwae":
            return self._map_scaled(self.module_.importance_weighted_elbo, self._scale(X)) + log_jacobian
        reconstruction, kl = self._map_scaled(self.module_.score_terms, self._scale(X))
        return -(reconstruction + kl) + log_jacobian

    def _p_values_of_scores(self, anomaly_scores):
        """P-values of anomaly scores (negative ELBO) already computed."""
        reference = self.reference_scores_
        n_at_or_above = reference.size - np.searchsorted(reference, anomaly_scores, side="left")
        return (1 + n_at_or_above) / (reference.size + 1)

    def _set_fitted_state(self, fitted, weights):
        """Restore the fitted attributes written by ``_fitted_state``."""
        fitted = dict(fitted)
        self._module_config = fitted.pop("module_config")
        names = fitted.pop("feature_names_in_")
        if names is not None:
            self.feature_names_in_ = np.asarray(names, dtype=object)
        self.center_ = np.asarray(fitted.pop("center_"), dtype=np.float64)
        self.scale_ = np.asarray(fitted.pop("scale_"), dtype=np.float64)
        # Model files written before image models existed have no image_shape_.
        shape = fitted.pop("image_shape_", None)
        self.image_shape_ = None if shape is None else tuple(shape)
        # Files written before calibration existed lack these three.
        self.training_scores_ = np.asarray(fitted.pop("training_scores_", []), dtype=np.float64)
        reference = fitted.pop("reference_scores_", None)
        self.calibration_fpr_ = fitted.pop("calibration_fpr_", None)
        self.reference_scores_ = None if reference is None else np.asarray(reference, dtype=np.float64)
        for name, value in fitted.items():
            setattr(self, name, value)
        self.module_ = self._restore_module(weights)

    def _restore_module(self, module_state):
        device = self.device_
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            warnings.warn(
                f"this model was trained on {device}, which is not available; using the CPU",
                UserWarning,
            )
            device = self.device_ = "cpu"
        module = build_vae(self._module_config)
        module.load_state_dict(module_state)
        return module.to(device).eval()


class ScoringModel(FittedVAE):
    """A model file loaded for scoring only (see
    :func:`anomvae.persistence.load_for_scoring`).

    It scores, thresholds and gives p-values exactly as the
    :class:`~anomvae.VAEAnomalyDetector` it was saved from (the same network
    and the same fixed latent draws, so the same bits), but it is not an
    estimator: it cannot be refitted, cloned or put in a pipeline.
    """

    def __init__(self, params, fitted, weights):
        self.score_bound = params.get("score_bound", "elbo")
        self._set_fitted_state(fitted, weights)

    def _check_features(self, X):
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has shape {X.shape}, but this model scores rows of {self.n_features_in_} features"
            )
        check_domain(X, self._module_config["likelihood"])
        return X

    def score_samples(self, X):
        """ELBO of each row (columns in the order of ``feature_names_in_``)."""
        return self._score_samples(self._check_features(X))

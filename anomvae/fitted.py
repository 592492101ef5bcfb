"""Inference with a fitted VAE, without scikit-learn.

:class:`FittedVAE` holds what every fitted model does with its network and
fitted attributes: scores, per-feature contributions, latent codes,
decoding, sampling and interpolation, calibration and p-values.
:class:`~anomvae.VAEAnomalyDetector` inherits it, and so does
:class:`ScoringModel`, which a model file loads into for scoring alone, so
that ``anomvae score`` on a CSV file does not pay for importing scikit-learn.
"""

import numbers
import warnings

import numpy as np
import torch

from .calibration import check_fpr, conformal_p_values, conformal_threshold
from .latent import interpolation_path, one_row
from .model import build_vae
from .preprocessing import Standardizer, check_domain
from .schema import set_fitted


def numpy_rng(seed):
    """scikit-learn's ``check_random_state``, except that None gives a
    generator seeded from the OS rather than numpy's global one, which is
    left untouched."""
    if seed is None:
        return np.random.RandomState()
    from sklearn.utils import check_random_state

    return check_random_state(seed)


def restore_network(config, weights, device):
    """The network of ``config`` with the ``weights`` (a state_dict), on
    ``device`` when it is available, else on the CPU with a warning.

    Returns
    -------
    module : VAE
        In evaluation mode.
    device : str
        Where it is.
    """
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        warnings.warn(f"this model was trained on {device}, which is not available; using the CPU", UserWarning)
        device = "cpu"
    module = build_vae(config)
    module.load_state_dict(weights)
    return module.to(device).eval(), device


class FittedVAE:
    """What a fitted model computes from its network and fitted attributes.

    Subclasses provide ``_validate_input(X)``, which returns ``X`` as a
    float array of ``n_features_in_`` columns in the likelihood's domain,
    and the attributes ``module_``, ``network_config_``, ``center_``,
    ``scale_``, ``latent_dim_``, ``reference_scores_`` and ``score_bound``.
    """

    def _check_fitted(self):
        """Raise NotFittedError unless the model is fitted (a model loaded
        from a file always is)."""

    def _validate_input(self, X):
        raise NotImplementedError

    @property
    def standardizer_(self):
        """The :class:`~anomvae.preprocessing.Standardizer` of ``center_``
        and ``scale_``: what the network sees, and which rows it can score."""
        return Standardizer(self.center_, self.scale_, self.network_config_.likelihood)

    def _score_samples(self, X):
        """ELBO (or importance-weighted bound) of validated rows."""
        module, standardizer = self.module_, self.standardizer_
        scaled = standardizer.transform(X)
        if self.score_bound == "iwae":
            return module.map_chunks(module.importance_weighted_elbo, scaled) + standardizer.log_jacobian
        reconstruction, kl = module.map_chunks(module.score_terms, scaled)
        return -(reconstruction + kl) + standardizer.log_jacobian

    def score_samples(self, X):
        """ELBO of each row, in nats: higher means more normal.

        The anomaly score reported to users is its negation, the negative
        ELBO.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        scores : ndarray of shape (n_samples,), dtype float64
        """
        return self._score_samples(self._validate_input(X))

    def feature_contributions(self, X):
        """Each feature's share of the anomaly score (the negative ELBO).

        A feature's contribution is its term of the reconstruction negative
        log-likelihood ``-log p(x_j|z)``, averaged over the same fixed latent
        draws as :meth:`score_samples`, plus ``log(scale_[j])`` (the
        change of units of standardisation), so that::

            feature_contributions(X).sum(axis=1) + kl_divergence(X)
                == -score_samples(X)

        up to floating-point rounding, with the default ``score_bound="elbo"``.
        With ``score_bound="iwae"`` the score is the importance-weighted
        bound, which these terms do not add up to; the contributions still
        come from the ELBO's terms and show which features the model finds
        least expected. For an image model, reshape a row to
        ``image_shape_`` to map where the anomaly lies.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        contributions : ndarray of shape (n_samples, n_features), dtype float64
            In nats, columns in the order of the features seen in fit (named
            by ``feature_names_in_`` when ``X`` had column names); always an
            array, also for a DataFrame ``X``. Larger means the feature was
            less expected given the rest of the row.
        """
        X = self._validate_input(X)
        module = self.module_
        reconstruction, _ = module.map_chunks(module.score_contributions, self.standardizer_.transform(X))
        return reconstruction + np.log(self.scale_)

    def kl_divergence(self, X):
        """``KL(q(z|x) || N(0, I))`` of each row, in nats: the part of the
        negative ELBO that :meth:`feature_contributions` leaves out.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        kl : ndarray of shape (n_samples,), dtype float64
        """
        X = self._validate_input(X)
        module = self.module_
        return module.map_chunks(lambda x: module.score_contributions(x)[1], self.standardizer_.transform(X))

    def _encode_means(self, X):
        """Latent means E[z|x] of validated rows."""
        module = self.module_
        return module.map_chunks(lambda x: module.encode(x)[0], self.standardizer_.transform(X))

    def _decode_means(self, Z):
        """Decoded means of float32 latent codes, in the data's units."""
        module = self.module_
        scaled = module.map_chunks(lambda z: module.likelihood.mean(module.decode(z)), Z)
        return scaled * self.scale_ + self.center_

    def calibrate(self, X, fpr=0.01):
        """Set the threshold so that normal rows are flagged at rate ``fpr``.

        A post-fit step: ``X`` holds reference rows the user trusts to be
        normal and that the detector was *not* trained on. The threshold
        becomes the ``k``-th smallest of their ``n`` anomaly scores,
        ``k = ceil((n + 1) * (1 - fpr))`` (the split-conformal rule): a new
        row from the reference rows' distribution is then flagged with
        probability at most ``fpr``, and above ``fpr - 1 / (n + 1)`` when
        scores have no ties. ``threshold_`` and ``offset_`` change together;
        fitting again discards the calibration, so calibrate after every fit.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Normal reference rows, not used in training.
        fpr : float, default=0.01
            Target false-alarm rate, in (0, 1). It needs at least
            ``ceil(1 / fpr) - 1`` reference rows.

        Returns
        -------
        self : object
            The calibrated detector.
        """
        X = self._validate_input(X)
        check_fpr(fpr)
        return self._calibrate_on_scores(-self._score_samples(X), fpr)

    def _calibrate_on_scores(self, anomaly_scores, fpr):
        """:meth:`calibrate` from the anomaly scores of reference rows
        already scored (:func:`anomvae.scoring.calibrate_images` scores
        them batch by batch)."""
        check_fpr(fpr)
        reference = np.sort(np.asarray(anomaly_scores, dtype=np.float64))
        self.threshold_ = conformal_threshold(reference, fpr)
        self.offset_ = -self.threshold_
        self.reference_scores_ = reference
        self.calibration_fpr_ = float(fpr)
        return self

    def p_values(self, X):
        """Conformal p-value of each row against the calibration rows.

        ``(1 + #{reference scores >= the row's score}) / (n_reference + 1)``:
        small for rows scored as more anomalous than most reference rows.
        A row has ``p_value <= calibration_fpr_`` exactly when it is flagged
        (its anomaly score exceeds ``threshold_``), as long as the threshold
        is the one ``calibrate`` set.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        p_values : ndarray of shape (n_samples,), dtype float64
            In ``[1 / (n_reference + 1), 1]``.
        """
        X = self._validate_input(X)
        if getattr(self, "reference_scores_", None) is None:
            from sklearn.exceptions import NotFittedError

            raise NotFittedError(
                f"This {type(self).__name__} instance is not calibrated yet. Call 'calibrate' "
                "with normal reference rows before asking for p-values."
            )
        return conformal_p_values(self.reference_scores_, -self._score_samples(X))

    def decision_function(self, X):
        """``score_samples(X) - offset_``: negative for anomalies.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        decision : ndarray of shape (n_samples,), dtype float64
        """
        return self._score_samples(self._validate_input(X)) - self.offset_

    def predict(self, X):
        """Label rows: +1 for normal, -1 for anomalies.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        labels : ndarray of shape (n_samples,), dtype int
        """
        decision = self._score_samples(self._validate_input(X)) - self.offset_
        return np.where(decision >= 0, 1, -1)

    def _as_rows(self, X, original=None):
        """Rows as ``set_output`` asks: an array, or a frame of the features
        seen in fit (``x0, x1, ...`` if unnamed) with ``original``'s index."""
        from sklearn.utils._set_output import _get_container_adapter

        adapter = _get_container_adapter("transform", self)
        if adapter is None:
            return X
        names = getattr(self, "feature_names_in_", None)
        columns = [f"x{i}" for i in range(self.n_features_in_)] if names is None else list(names)
        return adapter.create_container(X, original, columns=columns)

    def inverse_transform(self, Z):
        """Decoded means E[x|z] of latent codes, in the data's original units.

        Parameters
        ----------
        Z : array-like of shape (n_samples, latent_dim_)

        Returns
        -------
        X : ndarray or DataFrame of shape (n_samples, n_features_in_)
            Under ``set_output(transform="pandas")``, a DataFrame of columns
            ``feature_names_in_`` (and ``Z``'s index): its rows score back.
        """
        self._check_fitted()
        from sklearn.utils import check_array

        original, Z = Z, check_array(Z, dtype=[np.float64, np.float32])
        if Z.shape[1] != self.latent_dim_:
            raise ValueError(
                f"Z has {Z.shape[1]} columns, but the latent space of this "
                f"{type(self).__name__} has {self.latent_dim_} dimensions"
            )
        return self._as_rows(self._decode_means(Z.astype(np.float32)), original)

    def sample(self, n_samples=1, *, random_state=None, noise=False):
        """Generate new rows from the model, in the data's original units.

        Latent codes are drawn from the prior N(0, I) and decoded.

        Parameters
        ----------
        n_samples : int, default=1
            Number of rows to generate.
        random_state : int, RandomState instance or None, default=None
            Seeds the draws.
        noise : bool, default=False
            When False, return the decoder's mean for each code; when True,
            also draw from the observation model p(x|z) (Gaussian noise, or
            0/1 values for the Bernoulli likelihood).

        Returns
        -------
        X : ndarray or DataFrame of shape (n_samples, n_features_in_)
            A DataFrame under ``set_output(transform="pandas")``, as for
            :meth:`inverse_transform`.
        """
        self._check_fitted()
        if not isinstance(n_samples, numbers.Integral) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
        rng = numpy_rng(random_state)
        Z = rng.standard_normal((n_samples, self.latent_dim_)).astype(np.float32)
        if not noise:
            return self._as_rows(self._decode_means(Z))
        module = self.module_
        generator = torch.Generator(device=module.score_noise.device)
        generator.manual_seed(int(rng.randint(np.iinfo(np.int32).max)))
        draws = module.map_chunks(lambda z: module.likelihood.sample(module.decode(z), generator), Z)
        return self._as_rows(draws * self.scale_ + self.center_)

    def interpolate(self, x_a, x_b, n_steps=10, *, method="slerp"):
        """Decoded rows along a path in latent space from one row to another.

        The path joins the rows' latent means E[z|x]: ``"slerp"`` follows the
        great circle between them (:func:`anomvae.latent.interpolation_path`),
        ``"linear"`` the straight segment. Its ends decode to the two rows'
        reconstructions, ``inverse_transform(transform(x))``.

        Parameters
        ----------
        x_a, x_b : array-like of shape (n_features,) or (1, n_features)
            The two rows; a Series (such as ``frame.iloc[0]``) or a one-row
            DataFrame has its names checked as :meth:`score_samples` does.
        n_steps : int, default=10
            Rows on the path, both ends included; at least 2.
        method : {"slerp", "linear"}, default="slerp"
            Spherical or linear interpolation.

        Returns
        -------
        X : ndarray or DataFrame of shape (n_steps, n_features_in_)
            In the data's original units; a DataFrame under
            ``set_output(transform="pandas")``, as for :meth:`inverse_transform`.

        References
        ----------
        White, "Sampling Generative Networks", arXiv:1609.04468, 2016.

        Examples
        --------
        >>> import numpy as np
        >>> from anomvae import VAEAnomalyDetector
        >>> X = np.random.RandomState(0).normal(size=(100, 3))
        >>> detector = VAEAnomalyDetector(max_epochs=5, random_state=0).fit(X)
        >>> path = detector.interpolate(X[0], X[1], n_steps=5)
        >>> path.shape
        (5, 3)
        >>> np.allclose(path[0], detector.inverse_transform(detector.transform(X[:1]))[0])
        True
        """
        z_a, z_b = (self._encode_means(self._validate_input(one_row(x, name)))[0]
                    for x, name in ((x_a, "x_a"), (x_b, "x_b")))
        path = interpolation_path(z_a, z_b, n_steps, method)
        return self._as_rows(self._decode_means(path.astype(np.float32)))


class ScoringModel(FittedVAE):
    """A model file loaded for scoring only (see
    :func:`anomvae.persistence.load_for_scoring`).

    :meth:`score_samples` gives exactly the scores of the
    :class:`~anomvae.VAEAnomalyDetector` it was saved from (the same network
    and the same fixed latent draws, so the same bits), and the fitted
    attributes ``threshold_``, ``offset_``, ``reference_scores_`` and
    ``feature_names_in_`` are there; but it is not an estimator: it cannot
    be refitted, cloned or put in a pipeline. A DataFrame's columns are
    matched to ``feature_names_in_`` by name.

    Parameters
    ----------
    attributes : dict
        Fitted attributes by name, ``module_`` included (as
        :mod:`anomvae.persistence` builds them).
    score_bound : {"elbo", "iwae"}, default="elbo"
    """

    def __init__(self, attributes, *, score_bound="elbo"):
        self.score_bound = score_bound
        set_fitted(self, attributes)

    def _validate_input(self, X):
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
        check_domain(X, self.network_config_.likelihood)
        return X

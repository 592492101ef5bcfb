"""The scikit-learn estimator: :class:`VAEAnomalyDetector`."""

import warnings
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, OutlierMixin, TransformerMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from . import calibration
from .config import MAX_SCORE_SAMPLES, MAX_WIDTH, check_hidden_dims
from .fitted import FittedVAE, numpy_rng, restore_network
from .latent import latent_usage, warn_if_collapsed
from .preprocessing import Standardizer, check_domain
from .schema import migrate_pickled_state
from .training import TrainingOptions, fit_network, refit_rows, resolve_device

# Training anomaly scores kept with a fitted model, as the baseline that
# batch-shift tests compare against; bounded so model files stay small.
MAX_STORED_TRAINING_SCORES = 2000


class VAEAnomalyDetector(ClassNamePrefixFeaturesOutMixin, TransformerMixin, OutlierMixin, FittedVAE, BaseEstimator):
    """Anomaly detection with a variational autoencoder.

    A VAE is trained on ``X`` to maximise the evidence lower bound (ELBO) of
    its rows.  A row's ELBO is a lower bound on its log-likelihood under the
    learned model, so rows the model finds improbable get a low ELBO: the
    anomaly score is the negative ELBO, in nats.

    Parameters
    ----------
    latent_dim : int or "auto", default="auto"
        Size of the latent code. ``"auto"``: ``ceil(sqrt(n_features))``, or
        with ``architecture="conv"`` ``ceil(sqrt(height * width) / 2)``,
        clipped to [2, 32].
    hidden_dims : tuple of int, default=(64, 32)
        Widths of the encoder's hidden layers (at most 32, each at most
        65536); the decoder mirrors them. With ``architecture="conv"``, the
        dense layers between the convolutional features and the latent code.
    likelihood : {"gaussian", "bernoulli", "continuous_bernoulli"}, \
            default="gaussian"
        Observation model p(x|z). ``"gaussian"``: the decoder gives each
        feature's mean and a per-feature variance is learned, bounded below
        by ``min_variance``. ``"bernoulli"``: the decoder gives logits; ``X``
        must lie in [0, 1]. ``"continuous_bernoulli"``: the Bernoulli with
        its normalising constant, a proper density on [0, 1].
    min_variance : float or "auto", default="auto"
        Floor of the Gaussian likelihood's learned variances, in the units
        the network sees (standardised features by default); a float is one
        floor for every feature. ``"auto"`` gives each feature the larger of
        ``1e-3`` and ``step**2 / 12``, ``step`` being the smallest gap between
        two of its distinct training values (after scaling): counts, ratings
        and pixel levels cannot claim more precision than their grid holds.
    architecture : {"mlp", "conv"}, default="mlp"
        Dense encoder and decoder, or convolutional ones for rows holding
        the pixels of an image of shape ``image_shape`` (flattened as
        ``images.reshape(n, -1)``; see docs/images.md).
    image_shape : tuple of 3 int, default=None
        ``(channels, height, width)`` for ``architecture="conv"``; one entry
        may be -1, inferred from the number of features.
    beta : float, default=1.0
        Weight of the KL term in the training objective. Scores always use
        the true negative ELBO (weight 1).
    kl_warmup : int, default=10
        Epochs over which the KL weight rises linearly from
        ``beta / kl_warmup`` to ``beta``; 0 disables the ramp.
    max_epochs : int, default=400
        Maximum number of passes over the training data.
    batch_size : int or "auto", default="auto"
        Rows per optimisation step. ``"auto"``: ``clip(n_train // 16, 16,
        128)`` for ``n_train`` rows after the validation split. Data with
        fewer rows than a batch form one batch.
    trim_fraction : float, default=0.03
        After the KL warm-up, each step leaves out the
        ``floor(trim_fraction * batch)`` rows of its batch that ``trim_by``
        ranks worst, so anomalies in the training data pull less on the
        model. Validation and scores always use every row. 0 trains on all.
    trim_by : {"kl", "loss"}, default="kl"
        What ranks a batch's rows for ``trim_fraction``: their KL term
        (``"kl"``) or their negative ELBO (``"loss"``).
    refit_inliers : bool or "auto", default=False
        True: after training, leave out the training rows the fitted model
        flags (as :meth:`predict` would) and train a new network, from the
        same ``random_state``, on the rest; the threshold is then set on
        every training row. Fitting takes about twice as long. ``"auto"``
        refits only when batches are trimmed (``floor(trim_fraction * b) >=
        1`` for ``b`` the smaller of ``batch_size_`` and the rows trained on)
        and ``max_epochs > kl_warmup``.
    lr : float, default=3e-3
        Learning rate of the Adam optimiser.
    weight_decay : float, default=0.0
        L2 penalty of the Adam optimiser.
    validation_fraction : float, default=0.1
        Fraction of ``X`` held out to monitor early stopping; when it holds
        no row, the training rows are monitored.
    n_iter_no_change : int or None, default=20
        Stop once the monitored negative ELBO has not improved by more than
        ``tol`` for this many epochs after the warm-up, and keep the best
        epoch's weights. ``None`` trains for ``max_epochs``.
    tol : float, default=1e-3
        Smallest relative decrease of the monitored loss that counts as an
        improvement (below ``best - tol * abs(best)``).
    n_score_samples : int, default=8
        Monte-Carlo samples of z per row when scoring, at most 10000. The
        standard normal draws are fixed at fit time and shared by all rows,
        so scores are deterministic.
    contamination : "auto" or float, default="auto"
        Sets the decision threshold. A float in (0, 0.5] flags that fraction
        of the training rows; ``"auto"`` flags a row whose negative ELBO
        exceeds Tukey's fence on the training scores (third quartile plus
        1.5 interquartile ranges).
    standardize : bool or "auto", default="auto"
        Centre and scale each feature by its training mean and standard
        deviation (:class:`~anomvae.preprocessing.Standardizer`); ``"auto"``
        for the Gaussian likelihood only. Scores are corrected by the
        log-Jacobian, so they are densities of the data in its own units.
    score_bound : {"elbo", "iwae"}, default="elbo"
        The score: the ELBO (reconstruction term averaged over the fixed
        draws, KL term in closed form), or the tighter importance-weighted
        bound over the same draws (Burda et al., 2016).
    device : str, default="auto"
        Torch device: ``"auto"`` (CUDA when available), ``"cpu"``,
        ``"cuda"`` or ``"cuda:N"``.
    random_state : int, RandomState instance or None, default=None
        Seeds the weight initialisation, data split, shuffling, training
        noise and the fixed scoring draws. Global generators are untouched.
    verbose : int, default=0
        Print one line per epoch when positive.

    Attributes
    ----------
    module_ : torch.nn.Module
        The trained VAE.
    network_config_ : NetworkConfig
        Its architecture, which rebuilds it from a model file.
    latent_dim_ : int
        ``latent_dim`` resolved.
    min_variance_ : ndarray of shape (n_features_in_,) or None
        Per-feature variance floors (network units); None unless Gaussian.
    image_shape_ : tuple of 3 int or None
        ``image_shape`` resolved.
    center_, scale_ : ndarray of shape (n_features_in_,)
        The network sees ``(X - center_) / scale_``.
    offset_ : float
        ``decision_function = score_samples - offset_``; negative values
        are anomalies.
    threshold_ : float
        The same cut as an anomaly score: ``threshold_ == -offset_``.
    training_scores_ : ndarray of shape (n_stored,)
        Sorted anomaly scores of the training rows (at most 2000 order
        statistics): the shift test's baseline until calibrated.
    reference_scores_ : ndarray of shape (n_reference,) or None
        Sorted anomaly scores of the :meth:`calibrate` rows; None until then.
    calibration_fpr_ : float or None
        The ``fpr`` of the last :meth:`calibrate`.
    history_ : TrainingHistory
        Per epoch, in nats per row: ``epoch``, ``beta``, ``train_loss`` (the
        objective over the rows each step kept), ``train_reconstruction``,
        ``train_kl``, and ``val_loss`` (with ``beta``),
        ``val_reconstruction``, ``val_kl`` for the monitored rows (NaN when
        nothing is monitored).

        .. versionchanged:: 0.3.0
           A :class:`~anomvae.history.TrainingHistory` with one list per
           field (``history_.val_loss``) instead of a dict.
    n_epochs_, best_epoch_, batch_size_ : int
        Epochs run, the epoch whose weights were kept, rows per step
        (``batch_size_`` is None in models from files that predate it).
    kl_per_dim_ : ndarray of shape (latent_dim_,) or None
        Mean ``KL(q(z_d|x) || N(0, 1))`` of each latent unit over the rows
        the network was fitted on, in nats; it sums to their mean KL term.
    active_units_ : int or None
        Latent units whose posterior mean E[z_d|x] varies over those rows
        (variance above 0.01, Burda et al. 2016). When training converged
        with more than half inactive, fit warns: ``PosteriorCollapseWarning``
        (:mod:`anomvae.errors`). Both None in files that predate them.
    n_refit_excluded_ : int or None
        Rows the ``refit_inliers`` refit left out (0: none flagged, or too
        few left, and the first network was kept); None without a refit.
    device_ : str
        Device the model was trained on.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during fit, when ``X`` has string column names.

    See Also
    --------
    sklearn.ensemble.IsolationForest : Tree-based unsupervised outlier detector.
    anomvae.metrics.anomaly_roc_auc : Scorer for GridSearchCV, labels 1 = anomaly.
    anomvae.fitted.ScoringModel : A model file loaded for scoring alone.

    Notes
    -----
    ``score_samples`` returns the ELBO: ``log p(x|z)`` averaged over
    ``n_score_samples`` fixed draws of the latent, minus the closed-form
    ``KL(q(z|x) || N(0, I))``.

    References
    ----------
    Kingma and Welling, "Auto-Encoding Variational Bayes", ICLR 2014.
    An and Cho, "Variational Autoencoder based Anomaly Detection using
    Reconstruction Probability", 2015.

    Examples
    --------
    >>> import numpy as np
    >>> from anomvae import VAEAnomalyDetector
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(200, 4))
    >>> detector = VAEAnomalyDetector(random_state=0).fit(X)
    >>> detector.predict([[0.0, 0.0, 0.0, 0.0], [9.0, -9.0, 9.0, -9.0]])
    array([ 1, -1])
    """
    _parameter_constraints = {
        "latent_dim": [Interval(Integral, 1, MAX_WIDTH, closed="both"), StrOptions({"auto"})],
        "hidden_dims": [tuple, list],
        "likelihood": [StrOptions({"gaussian", "bernoulli", "continuous_bernoulli"})],
        "min_variance": [Interval(Real, 0, None, closed="neither"), StrOptions({"auto"})],
        "architecture": [StrOptions({"mlp", "conv"})],
        "image_shape": [tuple, list, None],
        "beta": [Interval(Real, 0, None, closed="left")],
        "kl_warmup": [Interval(Integral, 0, None, closed="left")],
        "max_epochs": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "trim_fraction": [Interval(Real, 0, 0.5, closed="left")],
        "trim_by": [StrOptions({"loss", "kl"})],
        "refit_inliers": ["boolean", StrOptions({"auto"})],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left"), None],
        "tol": [Interval(Real, 0, None, closed="left")],
        "n_score_samples": [Interval(Integral, 1, MAX_SCORE_SAMPLES, closed="both")],
        "contamination": [StrOptions({"auto"}), Interval(Real, 0, 0.5, closed="right")],
        "standardize": ["boolean", StrOptions({"auto"})],
        "score_bound": [StrOptions({"elbo", "iwae"})],
        "device": [str],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        *,
        latent_dim="auto",
        hidden_dims=(64, 32),
        likelihood="gaussian",
        min_variance="auto",
        architecture="mlp",
        image_shape=None,
        beta=1.0,
        kl_warmup=10,
        max_epochs=400,
        batch_size="auto",
        trim_fraction=0.03,
        trim_by="kl",
        refit_inliers=False,
        lr=3e-3,
        weight_decay=0.0,
        validation_fraction=0.1,
        n_iter_no_change=20,
        tol=1e-3,
        n_score_samples=8,
        contamination="auto",
        standardize="auto",
        score_bound="elbo",
        device="auto",
        random_state=None,
        verbose=0,
    ):
        self.latent_dim = latent_dim
        self.hidden_dims = hidden_dims
        self.likelihood = likelihood
        self.min_variance = min_variance
        self.architecture = architecture
        self.image_shape = image_shape
        self.beta = beta
        self.kl_warmup = kl_warmup
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.trim_fraction = trim_fraction
        self.trim_by = trim_by
        self.refit_inliers = refit_inliers
        self.lr = lr
        self.weight_decay = weight_decay
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.n_score_samples = n_score_samples
        self.contamination = contamination
        self.standardize = standardize
        self.score_bound = score_bound
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    def check_params(self):
        """Raise the error :meth:`fit` would raise for an invalid parameter,
        without fitting, so that a caller can fail before reading data."""
        self._validate_params()
        check_hidden_dims(self.hidden_dims)

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Train the VAE on ``X`` and set the decision threshold.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training rows, mostly normal.
        y : Ignored
            Not used, present for API consistency.

        Returns
        -------
        self : object
            The fitted detector.
        """
        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2)
        check_hidden_dims(self.hidden_dims)
        Standardizer.identity(X.shape[1], self.likelihood).check(X)
        self.device_ = resolve_device(self.device)
        n_train, converged = self._fit_network(X, numpy_rng(self.random_state))
        scores = self._score_samples(X)
        self.threshold_ = calibration.contamination_threshold(-scores, self.contamination)
        keep = refit_rows(-scores, self.threshold_, self.refit_inliers, self._training_options(),
                          batch_size=self.batch_size_, n_train=n_train)
        self.n_refit_excluded_ = None if keep is None else 0
        keep = None if keep is None or keep.all() or keep.sum() < 2 else keep
        if not converged:
            self._warn_not_converged(" (first network, before the refit_inliers refit)" if keep is not None else "")
        if keep is not None:
            self.n_refit_excluded_ = int((~keep).sum())
            if self.verbose:
                print(f"refit without the {self.n_refit_excluded_} training rows the first network "
                      f"({self.n_epochs_} epochs) flags")
            _, converged = self._fit_network(X[keep], numpy_rng(self.random_state))
            scores = self._score_samples(X)
            self.threshold_ = calibration.contamination_threshold(-scores, self.contamination)
            if not converged:
                self._warn_not_converged("")
        warn_if_collapsed(self.kl_per_dim_, self.active_units_, converged)
        self.training_scores_ = calibration.subsample_sorted(-scores, MAX_STORED_TRAINING_SCORES)
        # A new fit makes any earlier calibration meaningless.
        self.reference_scores_ = None
        self.calibration_fpr_ = None
        self.offset_ = -self.threshold_
        return self

    def _fit_network(self, X, rng):
        """A freshly initialised network trained on ``X``, with its scaling.
        Returns how many rows it trained on (the rest validate) and whether
        training converged."""
        net = fit_network(X, self._training_options(), rng, self.device_)
        self.center_, self.scale_ = net.standardizer.center, net.standardizer.scale
        self.network_config_, self.module_ = net.config, net.module
        self.min_variance_ = net.config.variance_floors()
        self.latent_dim_, self.image_shape_ = net.config.latent_dim, net.config.image_shape
        run = net.training
        self.history_, self.n_epochs_, self.best_epoch_, self.batch_size_ = (
            run.history, run.n_epochs, run.best_epoch, run.batch_size)
        self.kl_per_dim_, self.active_units_ = latent_usage(
            *net.module.map_chunks(net.module.latent_terms, net.standardizer.transform(X)))
        return net.n_train, run.converged

    def _training_options(self):
        return TrainingOptions.from_params(self.get_params(deep=False))

    def _warn_not_converged(self, which):
        warnings.warn(f"VAEAnomalyDetector reached max_epochs={self.max_epochs} before the validation loss "
                      f"stopped improving{which}; consider a larger max_epochs.", ConvergenceWarning, stacklevel=2)

    def _check_fitted(self):
        check_is_fitted(self)

    def _validate_input(self, X):
        self._check_fitted()
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        check_domain(X, self.likelihood)
        return X

    @property
    def _n_features_out(self):
        # What get_feature_names_out counts: one name per latent dimension.
        return self.latent_dim_

    def transform(self, X):
        """Latent means E[z|x] of the rows.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        Z : ndarray of shape (n_samples, latent_dim_)
        """
        return self._encode_means(self._validate_input(X))

    def __getstate__(self):
        # A copy: object.__getstate__ may hand back the live __dict__.
        state = dict(super().__getstate__())
        module = state.pop("module_", None)
        if module is not None:
            # Weights travel on the CPU so a GPU-trained model unpickles anywhere.
            state["_module_state"] = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        return state

    def __setstate__(self, state):
        state = migrate_pickled_state(state)
        module_state = state.pop("_module_state", None)
        super().__setstate__(state)
        if module_state is not None:
            self.module_, self.device_ = restore_network(self.network_config_, module_state, self.device_)

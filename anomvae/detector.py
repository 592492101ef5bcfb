"""The scikit-learn estimator: :class:`VAEAnomalyDetector`."""

import copy
import logging
import math
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import (
    BaseEstimator, ClassNamePrefixFeaturesOutMixin, OutlierMixin, TransformerMixin, _fit_context,
)
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from . import fitted as inference
from .elbo import negative_elbo
from .fitted import check_domain
from .floors import DEFAULT_MIN_VARIANCE
from .model import build_vae

logger = logging.getLogger("anomvae")


def _resolve_device(device):
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not a torch device name") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but CUDA is not available here")
    return str(resolved)


def _adam(parameters, **options):
    """Adam with its fused kernel where this torch build has one for the
    parameters' device (CPU since torch 2.4), else the foreach kernel: the
    per-tensor loop costs more than the small networks' own arithmetic."""
    parameters = list(parameters)
    try:
        return torch.optim.Adam(parameters, fused=True, **options)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(parameters, foreach=True, **options)


def _auto_batch_size(n_train):
    """Rows per step for ``batch_size="auto"``: 128 from 2,048 training
    rows on; below that ``n_train // 16`` (at least 16), so that small data
    still gets 16 steps per epoch (from 256 rows; 5 to 15 below) and early
    stopping watches a model that has had time to learn."""
    return int(np.clip(n_train // 16, 16, 128))


class _FlatParameters:
    """A module's parameters as views into one flat tensor while training.

    Adam updates element by element, so it may just as well update one
    tensor holding every parameter, which costs one kernel call and one
    bookkeeping pass per step instead of one per parameter tensor; the
    gradients are views into one flat buffer too, zeroed in one call
    (autograd adds into an existing ``.grad`` in place). :meth:`release`
    gives every parameter its own memory back.
    """

    def __init__(self, parameters):
        self.parameters = list(parameters)
        with torch.no_grad():
            self.param = torch.nn.Parameter(torch.cat([p.reshape(-1) for p in self.parameters]))
        self.param.grad = torch.zeros_like(self.param)
        offset = 0
        for p in self.parameters:
            n = p.numel()
            p.data = self.param.data[offset:offset + n].view_as(p)
            p.grad = self.param.grad[offset:offset + n].view_as(p)
            offset += n

    def zero_grad(self):
        self.param.grad.zero_()

    def release(self):
        for p in self.parameters:
            p.data = p.data.clone()
            p.grad = None


def _random_state(random_state):
    """``check_random_state``, except that None gives a generator seeded from
    the OS rather than numpy's global one, which is left untouched."""
    if random_state is None:
        return np.random.RandomState()
    return check_random_state(random_state)


# Training anomaly scores kept with a fitted model, as the baseline that
# batch-shift tests compare against; bounded so model files stay small.
_MAX_STORED_TRAINING_SCORES = 2000


def _rows_kept(per_row, kl, n_kept, trim_by):
    """Mask of a batch's ``n_kept`` rows lowest by ``trim_by`` ("loss": the
    per-row negative ELBO, "kl": the KL term); ties at the cut stay in."""
    rank_by = (kl if trim_by == "kl" else per_row).detach()
    return rank_by <= rank_by.kthvalue(n_kept).values


def _subsample_sorted(values, max_size):
    """``values`` sorted, thinned to at most ``max_size`` evenly spaced order
    statistics (deterministic, so refitting gives the same subsample)."""
    values = np.sort(np.asarray(values, dtype=np.float64))
    if values.size <= max_size:
        return values
    return values[np.linspace(0, values.size - 1, max_size).round().astype(np.intp)]


def _n_exceedances(n_reference, fpr):
    """Largest ``c`` with ``(1 + c) / (n_reference + 1) <= fpr``, or -1.

    Computed with the same floating-point division that :meth:`p_values`
    uses, so that ``p_value <= fpr`` and "flagged" agree exactly.
    """
    c = int(math.floor((n_reference + 1) * fpr)) - 1
    while c + 1 <= n_reference and (c + 2) / (n_reference + 1) <= fpr:
        c += 1
    while c >= 0 and (c + 1) / (n_reference + 1) > fpr:
        c -= 1
    return min(c, n_reference)


def _resolve_image_shape(image_shape, n_features):
    """``image_shape`` as a tuple of three positive ints holding ``n_features``
    pixels; one entry may be -1, inferred as in ``numpy.reshape``."""
    if image_shape is None:
        raise ValueError("architecture='conv' needs image_shape=(channels, height, width)")
    shape = tuple(image_shape)
    if len(shape) != 3 or not all(isinstance(v, Integral) and not isinstance(v, bool) for v in shape):
        raise ValueError(f"image_shape must be three integers (channels, height, width), got {image_shape!r}")
    if shape.count(-1) == 1:
        known = math.prod(v for v in shape if v != -1)
        if known > 0 and n_features % known == 0:
            shape = tuple(n_features // known if v == -1 else v for v in shape)
    if not all(v >= 1 for v in shape) or math.prod(shape) != n_features:
        raise ValueError(
            f"image_shape={image_shape!r} does not match X: {n_features} features per row, but "
            f"channels x height x width must equal the number of features"
        )
    return tuple(int(v) for v in shape)


def _grid_variance_floor(X, scale):
    """Per-feature variance floor for the Gaussian likelihood, in scaled units.

    A feature recorded on a grid of step ``h`` (counts, ratings, pixel
    levels) carries no information finer than ``h``; spreading each value
    uniformly over its grid cell has variance ``h**2 / 12``, and a learned
    variance below that would reward precision the data does not have.
    ``h`` is the smallest positive gap between sorted training values.
    Continuous features have tiny gaps and keep ``DEFAULT_MIN_VARIANCE``,
    as do constant ones, which have no gap.  Every row counts (a value
    seen once still marks the grid), and one column is sorted at a time,
    so the extra memory is one column's.
    """
    X = np.asarray(X)
    step = np.zeros(X.shape[1])
    for j in range(X.shape[1]):
        gaps = np.diff(np.sort(X[:, j].astype(np.float64)))
        gaps = gaps[gaps > 0]
        if gaps.size:
            step[j] = gaps.min() / scale[j]
    return np.maximum(DEFAULT_MIN_VARIANCE, step**2 / 12.0)


def _auto_latent_dim(n_features, image_shape=None):
    if image_shape is not None:
        # Neighbouring pixels are strongly correlated, so images need fewer
        # latent dimensions per pixel than tables per feature: half the
        # square root of the pixels per channel (4 for 8x8, 16 for 32x32).
        return int(min(32, max(2, math.ceil(math.sqrt(image_shape[1] * image_shape[2]) / 2))))
    return int(min(32, max(2, math.ceil(math.sqrt(n_features)))))


class VAEAnomalyDetector(ClassNamePrefixFeaturesOutMixin, TransformerMixin, OutlierMixin, BaseEstimator):
    """Anomaly detection with a variational autoencoder.

    A VAE is trained on ``X`` to maximise the evidence lower bound (ELBO) of
    its rows.  A row's ELBO is a lower bound on its log-likelihood under the
    learned model, so rows the model finds improbable get a low ELBO: the
    anomaly score is the negative ELBO, in nats.

    Parameters
    ----------
    latent_dim : int or "auto", default="auto"
        Size of the latent code. ``"auto"`` uses ``ceil(sqrt(n_features))``,
        clipped to [2, 32]; with ``architecture="conv"``,
        ``ceil(sqrt(height * width) / 2)``, clipped to [2, 32].
    hidden_dims : tuple of int, default=(64, 32)
        Widths of the encoder's hidden layers; the decoder mirrors them.
        With ``architecture="conv"``, the dense layers between the
        convolutional features and the latent code.
    likelihood : {"gaussian", "bernoulli", "continuous_bernoulli"}, \
            default="gaussian"
        Observation model p(x|z). ``"gaussian"``: the decoder gives each
        feature's mean and a per-feature variance is learned, bounded below
        by ``min_variance`` so that the likelihood stays bounded.
        ``"bernoulli"``: the decoder gives logits; ``X`` must lie in [0, 1].
        ``"continuous_bernoulli"``: the Bernoulli with its normalising
        constant, a proper density on [0, 1] (suited to grey levels).
    min_variance : float or "auto", default="auto"
        Floor of the Gaussian likelihood's learned variances, in the units
        the network sees (standardised features by default). A float is one
        floor for every feature. ``"auto"`` gives each feature the larger of
        ``1e-3`` and ``step**2 / 12``, where ``step`` is the smallest gap
        between two distinct training values of the feature (after
        scaling): the variance of a uniform spread over one step of the grid
        the values are recorded on. Counts, ratings and pixel levels then
        cannot claim more precision than their grid holds, which keeps
        almost-constant discrete features from dominating the score;
        continuous features keep the ``1e-3`` floor. Ignored by the other
        likelihoods.
    architecture : {"mlp", "conv"}, default="mlp"
        ``"mlp"``: dense encoder and decoder. ``"conv"``: each row holds the
        pixels of an image of shape ``image_shape`` (flattened row-major, as
        ``images.reshape(n, -1)`` of an (n, C, H, W) array); the encoder has
        stride-2 convolutions, each halving height and width until the larger
        side is at most 4 pixels (32, 64, then 128 channels), followed by the
        ``hidden_dims`` dense layers; the decoder mirrors it with transposed
        convolutions and crops to the image size. No batch normalisation, so
        a row's score never depends on its batch.
    image_shape : tuple of 3 int, default=None
        ``(channels, height, width)`` of the images, for
        ``architecture="conv"``; one entry may be -1, inferred from the
        number of features as in ``numpy.reshape``.
    beta : float, default=1.0
        Weight of the KL term in the training objective. Scores always use
        the true negative ELBO (weight 1).
    kl_warmup : int, default=10
        Number of epochs over which the KL weight rises linearly from
        ``beta / kl_warmup`` to ``beta``, which keeps the posterior from
        collapsing onto the prior early in training. 0 disables the ramp.
    max_epochs : int, default=400
        Maximum number of passes over the training data.
    batch_size : int or "auto", default="auto"
        Rows per optimisation step. ``"auto"`` uses
        ``clip(n_train // 16, 16, 128)`` where ``n_train`` is the number of
        training rows after the validation split: 128 from 2,048 rows on,
        smaller on small data so that an epoch holds 16 steps (from 256
        rows; fewer below, as batches stay at 16 rows or more).
        Data with fewer rows than a batch form one batch.
    trim_fraction : float, default=0.03
        After the KL warm-up, each optimisation step leaves out this
        fraction of its batch: the ``floor(trim_fraction * batch)`` rows
        that ``trim_by`` ranks worst, so batches under 34 rows lose none at
        0.03. Anomalies in the training data then pull less
        on the model. Validation and scores always use every row. 0 trains
        on every row.
    trim_by : {"kl", "loss"}, default="kl"
        What ranks a batch's rows for ``trim_fraction``: ``"kl"`` leaves out
        the rows with the largest KL term, those the encoder places furthest
        from the prior; ``"loss"`` those with the highest negative ELBO (how
        models saved before this parameter existed were trained). The score
        is the whole negative ELBO either way; docs/scoring.md compares the
        two.
    refit_inliers : bool or "auto", default=False
        True: after training, leave out the training rows the fitted model
        flags (by the ``contamination`` rule, as :meth:`predict` would) and
        train a new network on the rest, initialised from the same
        ``random_state``. The threshold is then set on every training row.
        Fitting takes about twice as long. ``"auto"`` refits only when batch
        trimming is active: ``floor(trim_fraction * b) >= 1`` for ``b`` the
        smaller of ``batch_size_`` and the rows trained on (with the
        automatic batch size, from about 600 rows, 544 after the validation
        split), and ``max_epochs > kl_warmup``. On the small ODDS sets the
        refit lost more than it gained (see docs/scoring.md).
    lr : float, default=3e-3
        Learning rate of the Adam optimiser.
    weight_decay : float, default=0.0
        L2 penalty of the Adam optimiser.
    validation_fraction : float, default=0.1
        Fraction of ``X`` held out to monitor early stopping. When it holds
        no row, early stopping monitors the training rows instead (and with
        ``n_iter_no_change=None`` as well, nothing is monitored).
    n_iter_no_change : int or None, default=20
        Training stops once the monitored negative ELBO has not improved by
        more than ``tol`` for this many epochs after the warm-up, and the
        weights of the epoch with the lowest monitored loss are restored. ``None`` trains for
        ``max_epochs``.
    tol : float, default=1e-3
        Smallest relative decrease of the monitored loss that counts as an
        improvement: an epoch improves when its loss is below
        ``best * (1 - tol)`` for a positive best loss (``best * (1 + tol)``
        for a negative one).
    n_score_samples : int, default=8
        Monte-Carlo samples of z per row when estimating the ELBO for
        scoring. The standard normal draws are fixed at fit time and shared
        by all rows, so scores are deterministic.
    contamination : "auto" or float, default="auto"
        Sets the decision threshold. A float in (0, 0.5] flags that fraction
        of the training rows. ``"auto"`` uses Tukey's rule on the training
        anomaly scores: a row is flagged when its negative ELBO exceeds the
        third quartile plus 1.5 interquartile ranges.
    standardize : bool or "auto", default="auto"
        Centre and scale each feature by its training mean and standard
        deviation before the network sees it. ``"auto"`` standardises for the
        Gaussian likelihood and leaves [0, 1] data as it is for the Bernoulli
        one. Scores are corrected by the log-Jacobian of the scaling, so they
        are densities of the data in its original units. A feature counts as
        constant (scale 1) when its standard deviation is 0 or below 1e-12
        times its mean's size; any other spread, however small, is scaled to
        1, so a feature holding only rounding noise around 0 (such as 5e-17)
        is magnified like a real one: round or drop such features.
    score_bound : {"elbo", "iwae"}, default="elbo"
        Bound used as the score. ``"elbo"``: the evidence lower bound, with
        the reconstruction term averaged over the ``n_score_samples`` fixed
        draws and the KL term in closed form. ``"iwae"``: the
        importance-weighted bound over the same draws, a tighter bound on
        ``log p(x)`` (Burda et al., 2016). Training is the same either way.
    device : str, default="auto"
        Torch device to train and score on: ``"auto"`` (CUDA when
        available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    random_state : int, RandomState instance or None, default=None
        Seeds the weight initialisation, data split, shuffling, training
        noise and the fixed scoring noise. Global random generators are
        left untouched.
    verbose : int, default=0
        Print one line per epoch when positive.

    Attributes
    ----------
    module_ : torch.nn.Module
        The trained VAE.
    latent_dim_ : int
        Latent size used (``latent_dim`` with ``"auto"`` resolved).
    min_variance_ : ndarray of shape (n_features_in_,) or None
        Per-feature variance floor of the Gaussian likelihood, in the
        network's units (``min_variance`` resolved); ``None`` for the other
        likelihoods.
    image_shape_ : tuple of 3 int or None
        ``image_shape`` with any -1 resolved, for ``architecture="conv"``;
        ``prod(image_shape_) == n_features_in_``.
    center_ : ndarray of shape (n_features_in_,)
        Per-feature value subtracted before the network sees ``X``.
    scale_ : ndarray of shape (n_features_in_,)
        Per-feature divisor applied after centring.
    offset_ : float
        ``decision_function = score_samples - offset_``; rows with a negative
        decision value are anomalies.
    threshold_ : float
        The same cut in anomaly-score units: ``threshold_ == -offset_``; a row
        whose negative ELBO exceeds it is flagged.
    training_scores_ : ndarray of shape (n_stored,)
        Sorted anomaly scores (negative ELBO) of the training rows, thinned
        to at most 2000 evenly spaced order statistics. The baseline against
        which a batch's score distribution is tested for a shift when the
        detector is not calibrated.
    reference_scores_ : ndarray of shape (n_reference,) or None
        Sorted anomaly scores of the reference rows given to
        :meth:`calibrate`; ``None`` until it is called (and again after
        ``fit``). :meth:`p_values` ranks rows against them.
    calibration_fpr_ : float or None
        The ``fpr`` of the last :meth:`calibrate`; ``None`` when the
        threshold comes from ``contamination``.
    history_ : dict of list
        Per-epoch ``epoch``, ``beta``, ``train_loss`` (the weighted training
        objective, over the rows each step kept; see ``trim_fraction``),
        ``train_reconstruction`` and ``train_kl`` (over every row), and for the
        monitored data ``val_loss`` (negative ELBO with ``beta``),
        ``val_reconstruction`` and ``val_kl``; all in nats per row.
    n_epochs_ : int
        Number of epochs run.
    batch_size_ : int
        Rows per optimisation step used in training (``batch_size``, or
        what ``"auto"`` chose).
    best_epoch_ : int
        Epoch whose weights were kept.
    n_refit_excluded_ : int or None
        Training rows the refit left out (``refit_inliers``): 0 when the
        first network flagged none (or all but one row, too few to train
        on; the first network is then kept), None when no refit was asked
        for or ``"auto"`` declined one. The attributes above describe the
        refitted network, trained on the other rows.
    device_ : str
        Device the model was trained on.
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during fit, when ``X`` has string column names.

    See Also
    --------
    sklearn.ensemble.IsolationForest : Tree-based unsupervised outlier detector.

    Notes
    -----
    ``score_samples`` returns the ELBO (higher is more normal), estimated with
    ``n_score_samples`` fixed draws of the reparameterised latent:
    ``log p(x|z)`` averaged over the draws, minus the closed-form
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
        "latent_dim": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
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
        "n_score_samples": [Interval(Integral, 1, None, closed="left")],
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

    # ------------------------------------------------------------------ fit

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
        if not all(isinstance(h, Integral) and not isinstance(h, bool) and h >= 1 for h in self.hidden_dims):
            raise ValueError(f"hidden_dims must hold positive integers, got {self.hidden_dims!r}")
        self._check_domain(X)
        inference.check_float32_range(X)
        self.device_ = _resolve_device(self.device)
        n_train, converged = self._fit_network(X, _random_state(self.random_state))
        scores = self._score_samples(X)
        if isinstance(self.refit_inliers, str):
            # "auto": when batches are trimmed, i.e. 3% of a batch (at most
            # the rows trained on) is a row, and training runs past the
            # warm-up, after which trimming starts.
            refit = (int(self.trim_fraction * min(self.batch_size_, n_train)) >= 1
                     and self.max_epochs > (self.kl_warmup or 0))
        else:
            refit = bool(self.refit_inliers)
        self.n_refit_excluded_ = None
        keep = None
        if refit:
            # Train again without the rows this fit flags, so anomalies in
            # the training data shape the final network less; the threshold
            # is then set on every training row, as without a refit.
            keep = -scores <= self._threshold_from(scores)[1]
            self.n_refit_excluded_ = 0
            if keep.all() or keep.sum() < 2:
                keep = None
        if not converged:
            self._warn_not_converged(" (first network, before the refit_inliers refit)" if keep is not None else "")
        if keep is not None:
            self.n_refit_excluded_ = int((~keep).sum())
            if self.verbose:
                print(
                    f"refit without the {self.n_refit_excluded_} training rows the first network "
                    f"({self.n_epochs_} epochs) flags"
                )
            _, converged = self._fit_network(X[keep], _random_state(self.random_state))
            scores = self._score_samples(X)
            if not converged:
                self._warn_not_converged("")
        self.training_scores_ = _subsample_sorted(-scores, _MAX_STORED_TRAINING_SCORES)
        # A new fit makes any earlier calibration meaningless.
        self.reference_scores_ = None
        self.calibration_fpr_ = None
        self.offset_, self.threshold_ = self._threshold_from(scores)
        return self

    def _threshold_from(self, scores):
        """``(offset_, threshold_)`` that ``contamination`` sets from the
        training rows' ``score_samples``."""
        if self.contamination == "auto":
            q1, q3 = np.percentile(-scores, [25.0, 75.0])
            threshold = float(q3 + 1.5 * (q3 - q1))
            return -threshold, threshold
        offset = float(np.percentile(scores, 100.0 * self.contamination))
        return offset, -offset

    def _fit_network(self, X, rng):
        """Scaling, variance floors and a freshly initialised network trained
        on ``X``. Returns how many rows it trained on (the rest validate) and
        whether training converged (early stopping ended it, or none was
        asked for)."""
        n_samples, n_features = X.shape
        conv = self.architecture == "conv"
        self.image_shape_ = _resolve_image_shape(self.image_shape, n_features) if conv else None

        standardize = self.likelihood == "gaussian" if self.standardize == "auto" else self.standardize
        if standardize:
            self.center_ = X.mean(axis=0, dtype=np.float64)
            scale = X.std(axis=0, dtype=np.float64)
            # Constant up to rounding, relative to the feature's own size: a
            # feature measured in tiny units (a spread of 1e-13) still varies.
            varies = (scale > 0) & (scale > 1e-12 * np.abs(self.center_))
            self.scale_ = np.where(varies, scale, 1.0)
        else:
            self.center_ = np.zeros(n_features)
            self.scale_ = np.ones(n_features)

        if self.likelihood != "gaussian":
            self.min_variance_ = None
        elif self.min_variance == "auto":
            self.min_variance_ = _grid_variance_floor(X, self.scale_)
        else:
            self.min_variance_ = np.full(n_features, float(self.min_variance))
        self.latent_dim_ = (
            _auto_latent_dim(n_features, self.image_shape_) if self.latent_dim == "auto" else int(self.latent_dim)
        )
        self._module_config = {
            "architecture": self.architecture,
            "n_features": int(n_features),
            "hidden_dims": [int(h) for h in self.hidden_dims],
            "latent_dim": self.latent_dim_,
            "likelihood": self.likelihood,
            "n_score_samples": int(self.n_score_samples),
        }
        if self.min_variance_ is not None:
            self._module_config["min_variance"] = [float(v) for v in self.min_variance_]
        if conv:
            self._module_config["image_shape"] = list(self.image_shape_)
        seeds = rng.randint(np.iinfo(np.int32).max, size=3)
        # Weight initialisation draws from torch's global generator; fork it
        # so the caller's random stream is left exactly as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seeds[0]))
            module = build_vae(self._module_config)
            module.score_noise.normal_()
        self.module_ = module.to(self.device_)

        X_scaled = self._scale(X)
        order = rng.permutation(n_samples)
        n_val = int(self.validation_fraction * n_samples)
        val_rows, train_rows = order[:n_val], order[n_val:]
        converged = self._train(X_scaled[train_rows], X_scaled[val_rows] if n_val else None, seeds[1:])
        return len(train_rows), converged

    def _train(self, X_train, X_val, seeds):
        device = self.device_
        module = self.module_
        shuffle_gen = torch.Generator().manual_seed(int(seeds[0]))
        noise_gen = torch.Generator(device=device).manual_seed(int(seeds[1]))
        X_train = torch.tensor(X_train, device=device)
        X_monitor = X_train if X_val is None else torch.tensor(X_val, device=device)
        n_train = X_train.shape[0]
        batch_size = _auto_batch_size(n_train) if self.batch_size == "auto" else self.batch_size
        self.batch_size_ = int(batch_size)
        flat = _FlatParameters(module.parameters())
        optimizer = _adam([flat.param], lr=self.lr, weight_decay=self.weight_decay)
        # Loss sums in float64 (MPS has none): float32 would lose digits over many rows.
        sum_dtype = torch.float32 if torch.device(device).type == "mps" else torch.float64

        history = {key: [] for key in (
            "epoch", "beta", "train_loss", "train_reconstruction", "train_kl",
            "val_loss", "val_reconstruction", "val_kl",
        )}
        best_loss, best_epoch, best_state, stale = np.inf, 0, None, 0
        stopped_early = False
        try:
            for epoch in range(1, self.max_epochs + 1):
                beta = self.beta * min(1.0, epoch / self.kl_warmup) if self.kl_warmup else self.beta
                module.train()
                sums = torch.zeros(3, device=device, dtype=sum_dtype)
                for rows in torch.randperm(n_train, generator=shuffle_gen).split(batch_size):
                    batch = X_train[rows.to(device)]
                    eps = torch.randn(
                        (1, batch.shape[0], self.latent_dim_), generator=noise_gen, device=device
                    )
                    reconstruction, kl = module(batch, eps)
                    reconstruction, kl = reconstruction.sum(-1), kl.sum(-1)
                    per_row = negative_elbo(reconstruction, kl, beta)
                    n_kept = per_row.shape[0] - int(self.trim_fraction * per_row.shape[0])
                    if n_kept < per_row.shape[0] and epoch > self.kl_warmup:
                        loss = per_row[_rows_kept(per_row, kl, n_kept, self.trim_by)].mean()
                    else:
                        loss = per_row.mean()
                    flat.zero_grad()
                    loss.backward()
                    optimizer.step()
                    # Summed on the device: reading a value back each step
                    # would make the CPU wait for every batch.
                    with torch.no_grad():
                        sums += torch.stack([loss, reconstruction.mean(), kl.mean()]) * batch.shape[0]
                train_loss, train_rec, train_kl = (sums / n_train).tolist()
                if not np.isfinite(train_loss):
                    raise ValueError(
                        f"training diverged at epoch {epoch} (loss {train_loss}); "
                        f"try a smaller lr than {self.lr} or standardize=True"
                    )
                module.eval()
                if X_val is None and self.n_iter_no_change is None:
                    # Nothing to monitor: re-scoring the training rows each
                    # epoch would only repeat the training loss at some cost.
                    val_rec = val_kl = val_loss = math.nan
                else:
                    val_rec, val_kl = (float(v.mean()) for v in self._map_scaled(
                        lambda x: module.score_terms(x), X_monitor))
                    val_loss = float(negative_elbo(val_rec, val_kl, self.beta))
                for key, value in zip(history, (
                    epoch, beta, train_loss, train_rec, train_kl, val_loss, val_rec, val_kl
                )):
                    history[key].append(float(value) if key != "epoch" else value)
                self._report_epoch(history, epoch)

                warming_up = self.kl_warmup and epoch < self.kl_warmup
                if warming_up or self.n_iter_no_change is None:
                    continue
                # Patience runs out after n_iter_no_change epochs without an
                # improvement larger than tol; the weights kept are those of the
                # lowest monitored loss, improvement large or small.
                stale = 0 if best_state is None or val_loss < best_loss - self.tol * abs(best_loss) else stale + 1
                if best_state is None or val_loss < best_loss:
                    best_loss, best_epoch = val_loss, epoch
                    best_state = copy.deepcopy(module.state_dict())
                if stale >= self.n_iter_no_change:
                    stopped_early = True
                    break
        finally:
            flat.release()

        if best_state is not None:
            module.load_state_dict(best_state)
        else:
            best_epoch = epoch
        module.eval()
        self.history_ = history
        self.n_epochs_ = epoch
        self.best_epoch_ = best_epoch
        return self.n_iter_no_change is None or stopped_early

    def _warn_not_converged(self, which):
        warnings.warn(
            f"VAEAnomalyDetector reached max_epochs={self.max_epochs} before the "
            f"validation loss stopped improving{which}; consider a larger max_epochs.",
            ConvergenceWarning,
            stacklevel=2,
        )

    def _report_epoch(self, history, epoch):
        record = {key: values[-1] for key, values in history.items()}
        line = (
            f"epoch {epoch}/{self.max_epochs}: loss {record['train_loss']:.4f}, "
            f"val {record['val_loss']:.4f} (reconstruction {record['val_reconstruction']:.4f}, "
            f"KL {record['val_kl']:.4f}, beta {record['beta']:.3g})"
        )
        if self.verbose:
            print(line)
        logger.debug(line, extra={"anomvae_epoch": record, "anomvae_max_epochs": self.max_epochs})

    # -------------------------------------------------------------- helpers

    def _check_domain(self, X):
        check_domain(X, self.likelihood)

    # Inference lives in anomvae.fitted, shared with the scoring-only model.

    def _scale(self, X):
        return inference.scale(self, X)

    def _map_scaled(self, fn, X):
        return inference.map_scaled(self, fn, X)

    def _score_samples(self, X):
        return inference.score_samples(self, X)

    def _p_values_of_scores(self, anomaly_scores):
        """P-values of anomaly scores (negative ELBO) already computed."""
        return inference.p_values_of_scores(self, anomaly_scores)

    def _restore_module(self, module_state):
        return inference.restore_module(self, module_state)

    def _validate_input(self, X):
        check_is_fitted(self)
        X = validate_data(self, X, dtype=[np.float64, np.float32], reset=False)
        self._check_domain(X)
        return X

    # -------------------------------------------------------------- scoring

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
        bound, which these terms do not add up to; the
        contributions still come from the ELBO's terms and show which
        features the model finds least expected. For an image model,
        reshape a row to ``image_shape_`` to map where the anomaly lies.

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
        reconstruction, _ = self._map_scaled(self.module_.score_contributions, self._scale(X))
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
        return self._map_scaled(lambda x: self.module_.score_contributions(x)[1], self._scale(X))

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

    # ------------------------------------------------------ calibration

    def calibrate(self, X, fpr=0.01):
        """Set the threshold so that normal rows are flagged at rate ``fpr``.

        A post-fit step: ``X`` holds reference rows the user trusts to be
        normal and that the detector was *not* trained on. The threshold
        becomes the ``k``-th smallest of their ``n`` anomaly scores, with
        ``k = ceil((n + 1) * (1 - fpr))`` (the split-conformal rule). For a
        new row drawn from the same distribution as the reference rows, the
        probability of being flagged is then at most ``fpr``, and above
        ``fpr - 1 / (n + 1)`` when scores have no ties.

        This replaces the threshold set by ``contamination``:
        ``threshold_`` and ``offset_`` change together. Fitting again
        discards the calibration (``reference_scores_`` and
        ``calibration_fpr_`` go back to ``None`` and the threshold to the
        ``contamination`` rule), so calibrate after every fit.

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
        if isinstance(fpr, bool) or not isinstance(fpr, Real) or not 0 < fpr < 1:
            raise ValueError(f"fpr must be a number in (0, 1), got {fpr!r}")
        reference = np.sort(-self._score_samples(X))
        n = reference.size
        exceedances = _n_exceedances(n, float(fpr))
        if exceedances < 0:
            needed = math.ceil(1.0 / fpr) - 1
            while 1 / (needed + 1) > fpr:
                needed += 1
            raise ValueError(
                f"calibrating for fpr={fpr:g} needs at least {needed} reference rows, got {n}"
            )
        self.threshold_ = float(reference[n - exceedances - 1])
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
        is the one :meth:`calibrate` set.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        p_values : ndarray of shape (n_samples,), dtype float64
            In ``[1 / (n_reference + 1), 1]``.
        """
        X = self._validate_input(X)
        self._check_calibrated()
        return self._p_values_of_scores(-self._score_samples(X))

    def _check_calibrated(self):
        if getattr(self, "reference_scores_", None) is None:
            raise NotFittedError(
                f"This {type(self).__name__} instance is not calibrated yet. Call 'calibrate' "
                "with normal reference rows before asking for p-values."
            )

    # ---------------------------------------------------- latent space

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
        X = self._validate_input(X)
        return self._map_scaled(lambda x: self.module_.encode(x)[0], self._scale(X))

    def fit_transform(self, X, y=None):
        """Fit the detector on ``X`` and return the latent means of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : Ignored

        Returns
        -------
        Z : ndarray of shape (n_samples, latent_dim_)
        """
        return self.fit(X, y).transform(X)

    def inverse_transform(self, Z):
        """Decoded means E[x|z] of latent codes, in the data's original units.

        Parameters
        ----------
        Z : array-like of shape (n_samples, latent_dim_)

        Returns
        -------
        X : ndarray of shape (n_samples, n_features_in_)
        """
        check_is_fitted(self)
        from sklearn.utils import check_array

        Z = check_array(Z, dtype=[np.float64, np.float32])
        if Z.shape[1] != self.latent_dim_:
            raise ValueError(
                f"Z has {Z.shape[1]} columns, but the latent space of this "
                f"VAEAnomalyDetector has {self.latent_dim_} dimensions"
            )
        return self._decode_means(Z.astype(np.float32))

    def _decode_means(self, Z):
        module = self.module_
        scaled = self._map_scaled(lambda z: module.likelihood.mean(module.decode(z)), Z)
        return scaled * self.scale_ + self.center_

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
        X : ndarray of shape (n_samples, n_features_in_)
        """
        check_is_fitted(self)
        if not isinstance(n_samples, Integral) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
        rng = _random_state(random_state)
        Z = rng.standard_normal((n_samples, self.latent_dim_)).astype(np.float32)
        if not noise:
            return self._decode_means(Z)
        module = self.module_
        generator = torch.Generator(device=module.score_noise.device)
        generator.manual_seed(int(rng.randint(np.iinfo(np.int32).max)))
        draws = self._map_scaled(lambda z: module.likelihood.sample(module.decode(z), generator), Z)
        return draws * self.scale_ + self.center_

    # ---------------------------------------------------------- model files

    def _fitted_state(self):
        """Fitted attributes as JSON-serialisable values, and the weights.

        :mod:`anomvae.persistence` writes the two into a model file.
        """
        check_is_fitted(self)
        fitted = {
            "n_features_in_": int(self.n_features_in_),
            "feature_names_in_": (
                [str(name) for name in self.feature_names_in_] if hasattr(self, "feature_names_in_") else None
            ),
            "center_": [float(v) for v in self.center_],
            "scale_": [float(v) for v in self.scale_],
            "offset_": float(self.offset_),
            "training_scores_": [float(v) for v in self.training_scores_],
            "reference_scores_": (
                None if self.reference_scores_ is None else [float(v) for v in self.reference_scores_]
            ),
            "calibration_fpr_": self.calibration_fpr_,
            "threshold_": float(self.threshold_),
            "latent_dim_": int(self.latent_dim_),
            "image_shape_": None if self.image_shape_ is None else list(self.image_shape_),
            # Epochs with nothing monitored hold NaN; JSON has no NaN.
            "history_": {k: [None if v != v else v for v in values] for k, values in self.history_.items()},
            "n_epochs_": int(self.n_epochs_),
            "best_epoch_": int(self.best_epoch_),
            "batch_size_": int(self.batch_size_),
            "n_refit_excluded_": self.n_refit_excluded_,
            "device_": self.device_,
            "module_config": self._module_config,
        }
        weights = {k: v.detach().cpu() for k, v in self.module_.state_dict().items()}
        return fitted, weights

    @classmethod
    def _from_fitted_state(cls, params, fitted, weights):
        """Rebuild a fitted detector from :meth:`_fitted_state`'s output."""
        params = dict(params)
        # Files of format 1 predate the min_variance parameter; their one
        # floor, stored in the network's configuration, is what was used.
        config = fitted["module_config"]
        floor = config.get("min_variance")
        if "min_variance" not in params and config["likelihood"] == "gaussian" and isinstance(floor, (int, float)):
            params["min_variance"] = float(floor)
        # Files written before trim_by existed trimmed by the loss.
        params.setdefault("trim_by", "loss")
        for name in ("hidden_dims", "image_shape"):
            if isinstance(params.get(name), list):
                params[name] = tuple(params[name])
        detector = cls(**params)
        inference.set_fitted_state(detector, fitted, weights)
        return detector

    # ------------------------------------------------------------ pickling

    def __getstate__(self):
        # A copy: object.__getstate__ may hand back the live __dict__.
        state = dict(super().__getstate__())
        module = state.pop("module_", None)
        if module is not None:
            # Weights travel on the CPU so a GPU-trained model unpickles anywhere.
            state["_module_state"] = {k: v.detach().cpu() for k, v in module.state_dict().items()}
        return state

    def __setstate__(self, state):
        module_state = state.pop("_module_state", None)
        if "min_variance" not in state:
            # Pickled before min_variance existed, when every Gaussian
            # feature had the floor DEFAULT_MIN_VARIANCE.
            gaussian = state.get("likelihood") == "gaussian"
            state["min_variance"] = DEFAULT_MIN_VARIANCE if gaussian else "auto"
            if "_module_config" in state:
                state["min_variance_"] = inference.variance_floors(state["_module_config"])
        # Pickled before trim_by existed, when batches were trimmed by the loss.
        state.setdefault("trim_by", "loss")
        super().__setstate__(state)
        if module_state is not None:
            self.module_ = self._restore_module(module_state)

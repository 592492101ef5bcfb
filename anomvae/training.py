"""Training a VAE: the network's set-up, the epoch loop, its optimiser,
trimming and early stopping.

:func:`fit_network` scales the data, builds a network and trains it;
:func:`train` is the epoch loop alone, on any :class:`~anomvae.model.VAE`
and float32 arrays. Neither needs the estimator, which turns its
parameters into :class:`TrainingOptions` and keeps what they report.
"""

import copy
import logging
import math
from dataclasses import dataclass, fields

import numpy as np
import torch

from .config import NetworkConfig, auto_latent_dim, resolve_image_shape
from .elbo import negative_elbo
from .history import EpochRecord, TrainingHistory
from .model import build_vae
from .preprocessing import Standardizer, grid_variance_floor

logger = logging.getLogger("anomvae")


@dataclass(frozen=True)
class TrainingOptions:
    """How to fit a network: the estimator's parameters that shape the
    network and its training, by the same names and with the same defaults
    (see :class:`~anomvae.VAEAnomalyDetector` for each). ``"auto"`` values
    are resolved by :func:`fit_network` and :func:`train`.

    This is the one place a training variant becomes an option: a field
    here, a parameter of the estimator of the same name.
    """

    architecture: str = "mlp"
    image_shape: tuple = None
    hidden_dims: tuple = (64, 32)
    latent_dim: object = "auto"
    likelihood: str = "gaussian"
    min_variance: object = "auto"
    standardize: object = "auto"
    n_score_samples: int = 8
    validation_fraction: float = 0.1
    max_epochs: int = 400
    batch_size: object = "auto"
    lr: float = 3e-3
    weight_decay: float = 0.0
    beta: float = 1.0
    kl_warmup: int = 10
    trim_fraction: float = 0.03
    trim_by: str = "kl"
    n_iter_no_change: object = 20
    tol: float = 1e-3
    verbose: int = 0

    @classmethod
    def from_params(cls, params):
        """The options among an estimator's ``get_params()``."""
        return cls(**{f.name: params[f.name] for f in fields(cls)})

    def kl_weight(self, epoch):
        """The KL term's weight at ``epoch`` (1-based) during warm-up and after."""
        return self.beta * min(1.0, epoch / self.kl_warmup) if self.kl_warmup else self.beta


@dataclass(frozen=True)
class TrainingResult:
    """What :func:`train` reports; the network itself is trained in place."""

    history: TrainingHistory
    n_epochs: int
    best_epoch: int
    batch_size: int
    converged: bool


@dataclass(frozen=True)
class FittedNetwork:
    """What :func:`fit_network` made: the scaling, the network and its
    configuration (floors, latent size and image shape resolved), how many
    rows it trained on (the rest validated) and the training's report."""

    standardizer: Standardizer
    config: NetworkConfig
    module: torch.nn.Module
    n_train: int
    training: TrainingResult


class EarlyStopping:
    """Stops training once the monitored loss has not improved by more than
    ``tol`` (relative) for ``patience`` epochs, and keeps the weights of the
    epoch with the lowest loss, improvement large or small.

    State: ``best_loss``, ``best_epoch``, ``stale`` (epochs since the last
    improvement larger than ``tol``) and ``stopped``.
    """

    def __init__(self, patience, tol):
        self.patience, self.tol = patience, tol
        self.best_loss, self.best_epoch, self.stale, self.stopped = np.inf, 0, 0, False
        self._best_state = None

    def update(self, epoch, loss, module):
        """Record an epoch's monitored ``loss``; True when training should stop."""
        first = self._best_state is None
        self.stale = 0 if first or loss < self.best_loss - self.tol * abs(self.best_loss) else self.stale + 1
        if first or loss < self.best_loss:
            self.best_loss, self.best_epoch = loss, epoch
            self._best_state = copy.deepcopy(module.state_dict())
        self.stopped = self.stale >= self.patience
        return self.stopped

    @property
    def patience_left(self):
        """Epochs without an improvement larger than ``tol`` that training
        still allows (0 once it stops)."""
        return max(self.patience - self.stale, 0)

    def restore_best(self, module):
        """Load the best epoch's weights into ``module``; False when no epoch
        was recorded."""
        if self._best_state is None:
            return False
        module.load_state_dict(self._best_state)
        return True


class FlatParameters:
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


def adam(parameters, **options):
    """Adam with its fused kernel where this torch build has one for the
    parameters' device (CPU since torch 2.4), else the foreach kernel: the
    per-tensor loop costs more than the small networks' own arithmetic."""
    parameters = list(parameters)
    try:
        return torch.optim.Adam(parameters, fused=True, **options)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(parameters, foreach=True, **options)


def auto_batch_size(n_train):
    """Rows per step for ``batch_size="auto"``: 128 from 2,048 training
    rows on; below that ``n_train // 16`` (at least 16), so that small data
    still gets 16 steps per epoch (from 256 rows; 5 to 15 below) and early
    stopping watches a model that has had time to learn."""
    return int(np.clip(n_train // 16, 16, 128))


def rows_kept(per_row, kl, n_kept, trim_by):
    """Mask of a batch's ``n_kept`` rows lowest by ``trim_by`` ("loss": the
    per-row negative ELBO, "kl": the KL term); ties at the cut stay in."""
    rank_by = (kl if trim_by == "kl" else per_row).detach()
    return rank_by <= rank_by.kthvalue(n_kept).values


def refit_rows(anomaly_scores, threshold, refit_inliers, options, *, batch_size, n_train):
    """The training rows a ``refit_inliers`` refit trains on (those whose
    anomaly score is at most ``threshold``), or None when no refit is due.

    ``"auto"`` refits when batches are trimmed, i.e. ``trim_fraction`` of a
    batch (``batch_size`` rows, at most the ``n_train`` rows trained on) is
    at least a row, and training runs past the warm-up, after which
    trimming starts.
    """
    if isinstance(refit_inliers, str):
        trims = int(options.trim_fraction * min(batch_size, n_train)) >= 1
        refit = trims and options.max_epochs > (options.kl_warmup or 0)
    else:
        refit = bool(refit_inliers)
    return anomaly_scores <= threshold if refit else None


def resolve_device(device):
    """The torch device name ``device`` ("auto": CUDA when available) stands for."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r:.80} is not a torch device name") from exc
    if resolved.type not in ("cpu", "cuda", "mps"):
        # Such as "meta", which holds no data: a network there computes nothing.
        raise ValueError(f"device={device!r} cannot train or score a network; use auto, cpu, cuda, cuda:N or mps")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but CUDA is not available here")
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r} was asked for but MPS is not available here")
    return str(resolved)


def fit_network(X, options, rng, device, *, on_epoch=None):
    """Scale ``X``, build a freshly initialised network for it and train it.

    ``rng`` (a numpy RandomState) seeds the initialisation, the validation
    split, the shuffling and the training noise; torch's global generator
    is left as it was. ``on_epoch`` is passed on to :func:`train`.

    Returns
    -------
    FittedNetwork
    """
    n_samples, n_features = X.shape
    image_shape = resolve_image_shape(options.image_shape, n_features) if options.architecture == "conv" else None
    standardize = options.likelihood == "gaussian" if options.standardize == "auto" else options.standardize
    standardizer = Standardizer.fit(X, standardize=standardize, likelihood=options.likelihood)
    if options.likelihood != "gaussian":
        floors = None
    elif options.min_variance == "auto":
        floors = grid_variance_floor(X, standardizer.scale)
    else:
        floors = np.full(n_features, float(options.min_variance))
    latent_dim = auto_latent_dim(n_features, image_shape) if options.latent_dim == "auto" else int(options.latent_dim)
    config = NetworkConfig(
        architecture=options.architecture, n_features=int(n_features),
        hidden_dims=tuple(int(h) for h in options.hidden_dims), latent_dim=latent_dim,
        likelihood=options.likelihood, n_score_samples=int(options.n_score_samples),
        min_variance=None if floors is None else tuple(float(v) for v in floors), image_shape=image_shape,
    )
    seeds = rng.randint(np.iinfo(np.int32).max, size=3)
    # Weight initialisation draws from torch's global generator; fork it so
    # the caller's random stream is left exactly as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seeds[0]))
        module = build_vae(config)
        module.score_noise.normal_()
    module = module.to(device)
    X_scaled = standardizer.transform(X)
    order = rng.permutation(n_samples)
    n_val = int(options.validation_fraction * n_samples)
    val_rows, train_rows = order[:n_val], order[n_val:]
    result = train(module, X_scaled[train_rows], X_scaled[val_rows] if n_val else None, options,
                   seeds=seeds[1:], device=device, on_epoch=on_epoch)
    return FittedNetwork(standardizer, config, module, len(train_rows), result)


def train(module, X_train, X_val, options, *, seeds, device, on_epoch=None):
    """Train ``module`` in place on the float32 rows ``X_train``.

    Early stopping monitors the negative ELBO of ``X_val`` (of ``X_train``
    when it is None) and restores the best epoch's weights. ``seeds`` (two
    ints) seed the shuffling and the training noise. ``on_epoch(record,
    module)``, when given, is called after each epoch with its
    :class:`EpochRecord` and the network in evaluation mode (to watch
    training; it must not change the network).

    Returns
    -------
    TrainingResult
        ``converged`` is True when early stopping ended training or none
        was asked for.
    """
    X_train = torch.tensor(X_train, device=device)
    X_monitor = X_train if X_val is None else torch.tensor(X_val, device=device)
    n_train = X_train.shape[0]
    batch_size = auto_batch_size(n_train) if options.batch_size == "auto" else int(options.batch_size)
    stopping = None if options.n_iter_no_change is None else EarlyStopping(options.n_iter_no_change, options.tol)
    # Nothing to monitor: re-scoring the training rows each epoch would
    # only repeat the training loss at some cost.
    monitored = X_val is not None or stopping is not None
    history = TrainingHistory()
    step = _Steps(module, options, batch_size, seeds, device)
    try:
        for epoch in range(1, options.max_epochs + 1):
            train_terms = step.epoch(X_train, epoch)
            module.eval()
            val_terms = _monitor(module, X_monitor, options.beta) if monitored else (math.nan,) * 3
            record = EpochRecord(epoch, float(options.kl_weight(epoch)), *train_terms, *val_terms)
            history.append(record)
            watching = stopping is not None and not (options.kl_warmup and epoch < options.kl_warmup)
            stop = watching and stopping.update(epoch, record.val_loss, module)
            _report(record, options, None if stopping is None else stopping.patience_left)
            if on_epoch is not None:
                on_epoch(record, module)
            if stop:
                break
    finally:
        step.release()
    best_epoch = stopping.best_epoch if stopping is not None and stopping.restore_best(module) else epoch
    module.eval()
    converged = stopping is None or stopping.stopped
    return TrainingResult(history, epoch, best_epoch, batch_size, converged)


class _Steps:
    """The optimisation steps of one training run: shuffling, noise,
    trimming and the optimiser, over parameters flattened for speed."""

    def __init__(self, module, options, batch_size, seeds, device):
        self.module, self.options, self.batch_size = module, options, batch_size
        self.shuffle_gen = torch.Generator().manual_seed(int(seeds[0]))
        self.noise_gen = torch.Generator(device=device).manual_seed(int(seeds[1]))
        self.device = device
        self.flat = FlatParameters(module.parameters())
        self.optimizer = adam([self.flat.param], lr=options.lr, weight_decay=options.weight_decay)
        # Loss sums in float64 (MPS has none): float32 would lose digits over many rows.
        self.sum_dtype = torch.float32 if torch.device(device).type == "mps" else torch.float64

    def epoch(self, X, epoch):
        """One pass over ``X``: mean objective, reconstruction and KL per row."""
        options, module, device = self.options, self.module, self.device
        beta = options.kl_weight(epoch)
        trimming = epoch > options.kl_warmup
        module.train()
        sums = torch.zeros(3, device=device, dtype=self.sum_dtype)
        n_rows = X.shape[0]
        for rows in torch.randperm(n_rows, generator=self.shuffle_gen).split(self.batch_size):
            batch = X[rows.to(device)]
            eps = torch.randn((1, batch.shape[0], module.latent_dim), generator=self.noise_gen, device=device)
            reconstruction, kl = module(batch, eps)
            reconstruction, kl = reconstruction.sum(-1), kl.sum(-1)
            per_row = negative_elbo(reconstruction, kl, beta)
            n_kept = per_row.shape[0] - int(options.trim_fraction * per_row.shape[0])
            if n_kept < per_row.shape[0] and trimming:
                loss = per_row[rows_kept(per_row, kl, n_kept, options.trim_by)].mean()
            else:
                loss = per_row.mean()
            self.flat.zero_grad()
            loss.backward()
            self.optimizer.step()
            # Summed on the device: reading a value back each step would
            # make the CPU wait for every batch.
            with torch.no_grad():
                sums += torch.stack([loss, reconstruction.mean(), kl.mean()]) * batch.shape[0]
        train_loss, train_rec, train_kl = (sums / n_rows).tolist()
        if not np.isfinite(train_loss):
            raise ValueError(
                f"training diverged at epoch {epoch} (loss {train_loss}); "
                f"try a smaller lr than {options.lr} or standardize=True"
            )
        return float(train_loss), float(train_rec), float(train_kl)

    def release(self):
        self.flat.release()


def _monitor(module, X, beta):
    """Mean reconstruction, KL and negative ELBO (KL weighted by ``beta``)
    of the monitored rows, with the fixed scoring draws."""
    rec, kl = (float(v.mean()) for v in module.map_chunks(module.score_terms, X))
    return float(negative_elbo(rec, kl, beta)), rec, kl


def _report(record, options, patience_left):
    """Print the epoch (``verbose``) and log it on the ``anomvae`` logger at
    DEBUG level, with the :class:`EpochRecord` as ``anomvae_epoch`` and the
    early-stopping patience left after it as ``anomvae_patience_left``
    (None without early stopping), for progress displays."""
    line = (
        f"epoch {record.epoch}/{options.max_epochs}: loss {record.train_loss:.4f}, "
        f"val {record.val_loss:.4f} (reconstruction {record.val_reconstruction:.4f}, "
        f"KL {record.val_kl:.4f}, beta {record.beta:.3g})"
    )
    if options.verbose:
        print(line)
    logger.debug(line, extra={"anomvae_epoch": record, "anomvae_max_epochs": options.max_epochs,
                              "anomvae_patience_left": patience_left})

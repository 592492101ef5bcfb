"""PyTorch modules of the variational autoencoder.

Only ``torch.nn.Module`` classes live here: encoders, decoders and
likelihood heads, plus :func:`build_vae`, which builds a network from the
:class:`~anomvae.config.NetworkConfig` that a fitted model stores.  Loss
formulas come from :mod:`anomvae.elbo`.
"""

import math

import numpy as np
import torch
from torch import nn

from . import elbo
from .config import conv_plan
from .preprocessing import DEFAULT_MIN_VARIANCE

# Upper bound on the log-variance of q(z|x).  Far above what ordinary rows
# need (the prior's log-variance is 0), it keeps exp(logvar) finite for
# rows far outside the training data.  Without it such a row's KL term
# overflows to inf, and even when the trimmed loss leaves that row out,
# backpropagation multiplies its zero weight by inf and the parameters
# become NaN.  Very negative values need no bound: exp goes to 0, and no
# term divides by the posterior's variance.
LOGVAR_MAX = 20.0

# Scoring runs the network on chunks of one fixed height per network, copied
# into freshly allocated buffers and padded with zeros.  Matrix-multiply
# kernels pick their algorithm (and so their summation order) by matrix shape
# and memory alignment, so a row's last bits could otherwise depend on how
# many rows share its call and where numpy placed them; with every call the
# same shape and alignment a row's score is bit-for-bit the same in any batch.
MIN_CHUNK_ROWS = 16
MAX_CHUNK_ROWS = 2048
# Target number of floats in one chunk's widest activation tensor.
CHUNK_BUDGET = 1 << 20


class _SiLU(nn.SiLU):
    """SiLU that overwrites its input when no gradient is recorded.

    Scoring computes each activation once and drops the layer's output right
    after, so writing the result in place saves allocating and filling a
    second tensor (about a tenth of scoring time, same values); training
    keeps the input, which backpropagation through SiLU needs.
    """

    def forward(self, x):
        return nn.functional.silu(x, inplace=not torch.is_grad_enabled())


def _mlp(sizes):
    """Linear layers with a SiLU after each, for ``sizes[0] -> ... -> sizes[-1]``."""
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(n_in, n_out), _SiLU()]
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """Maps rows to the mean and log-variance of a diagonal Gaussian q(z|x)."""

    def __init__(self, n_features, hidden_dims, latent_dim):
        super().__init__()
        self.body = _mlp([n_features, *hidden_dims])
        width = hidden_dims[-1] if hidden_dims else n_features
        self.mu = nn.Linear(width, latent_dim)
        self.logvar = nn.Linear(width, latent_dim)

    def forward(self, x):
        h = self.body(x)
        return self.mu(h), self.logvar(h).clamp(max=LOGVAR_MAX)


class MLPDecoder(nn.Module):
    """Maps latent codes to the location parameter of p(x|z), one per feature."""

    def __init__(self, latent_dim, hidden_dims, n_features):
        super().__init__()
        self.body = _mlp([latent_dim, *hidden_dims])
        width = hidden_dims[-1] if hidden_dims else latent_dim
        self.out = nn.Linear(width, n_features)

    def forward(self, z):
        return self.out(self.body(z))


class _Likelihood(nn.Module):
    """Base of the likelihood heads: ``log_prob`` is element-wise, and
    ``expected_nll`` averages ``-log_prob`` over K draws of the decoder's
    output (shape ``(K, n, n_features)``)."""

    def expected_nll(self, x, loc):
        log_px = self.log_prob(x, loc)
        # Average the K samples one element at a time: a reduction over the
        # leading axis may be vectorised across rows, which would make a
        # row's last bits depend on its position in the batch.
        return -sum(log_px.unbind(0)) / log_px.shape[0]


class GaussianLikelihood(_Likelihood):
    """Gaussian p(x|z) with the decoder's output as mean and a learned
    per-feature variance bounded below by ``min_variance`` (one float for
    every feature, or one per feature)."""

    def __init__(self, n_features, min_variance=DEFAULT_MIN_VARIANCE):
        super().__init__()
        # On the CPU even where the network is built elsewhere: on torch's
        # meta device (see state_shapes) these few element-wise operations
        # would first import torch's compiler, most of a second.
        floor = torch.as_tensor(min_variance, dtype=torch.float64, device="cpu")
        if floor.dim() == 0:
            floor = floor.expand(n_features)
        if floor.shape != (n_features,):
            raise ValueError(f"min_variance holds {floor.numel()} values for {n_features} features")
        # Not in the state_dict: the floors travel in the model's
        # configuration, so files saved before they were per-feature load.
        self.register_buffer("min_variance", floor.float(), persistent=False)
        # softplus(raw) + floor starts at a variance of about 1, the
        # variance of a standardised feature (or just above the floor, if
        # that is above 1); computed in double precision, then rounded.
        start = torch.log(torch.expm1((1.0 - floor).clamp(min=1e-6)))
        self.raw_variance = nn.Parameter(start.float())

    def logvar(self):
        return torch.log(nn.functional.softplus(self.raw_variance) + self.min_variance)

    def log_prob(self, x, loc):
        return elbo.gaussian_log_prob(x, loc, self.logvar())

    def expected_nll(self, x, loc):
        return elbo.gaussian_expected_nll(x, loc, self.logvar())

    def mean(self, loc):
        return loc

    def sample(self, loc, generator=None):
        noise = torch.randn(loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
        return loc + torch.exp(0.5 * self.logvar()) * noise


class BernoulliLikelihood(_Likelihood):
    """Bernoulli p(x|z) with the decoder's output as logits, for x in [0, 1]."""

    def log_prob(self, x, loc):
        return elbo.bernoulli_log_prob(x, loc)

    def mean(self, loc):
        return torch.sigmoid(loc)

    def sample(self, loc, generator=None):
        return torch.bernoulli(torch.sigmoid(loc), generator=generator)


class ContinuousBernoulliLikelihood(_Likelihood):
    """Continuous Bernoulli p(x|z) with the decoder's output as logits: a
    proper density of grey levels in [0, 1]."""

    def log_prob(self, x, loc):
        return elbo.continuous_bernoulli_log_prob(x, loc)

    def mean(self, loc):
        return elbo.continuous_bernoulli_mean(loc)

    def sample(self, loc, generator=None):
        # Inverse CDF: x = log(1 + u (e^l - 1)) / l, and x = u where l = 0.
        u = torch.rand(loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
        logits = loc.clamp(-30.0, 30.0)
        small = logits.abs() < 1e-3
        safe = torch.where(small, torch.ones_like(logits), logits)
        return torch.where(small, u, torch.log1p(u * torch.expm1(safe)) / safe).clamp(0.0, 1.0)


class ConvEncoder(nn.Module):
    """Strided convolutions, then dense layers, from flat pixel rows to the
    mean and log-variance of q(z|x).  Rows are reshaped to ``image_shape``
    inside, so the rest of the VAE sees flat rows as for tabular data."""

    def __init__(self, image_shape, hidden_dims, latent_dim):
        super().__init__()
        self.image_shape = tuple(int(v) for v in image_shape)
        channels, sizes = conv_plan(self.image_shape)
        layers, previous = [], self.image_shape[0]
        for width in channels:
            layers += [nn.Conv2d(previous, width, kernel_size=3, stride=2, padding=1), nn.SiLU()]
            previous = width
        self.conv = nn.Sequential(*layers)
        n_conv = channels[-1] * sizes[-1][0] * sizes[-1][1]
        self.dense = MLPEncoder(n_conv, hidden_dims, latent_dim)

    def forward(self, x):
        h = self.conv(x.reshape(-1, *self.image_shape))
        return self.dense(h.flatten(1))


class ConvDecoder(nn.Module):
    """Dense layers, then stride-2 transposed convolutions mirroring
    :class:`ConvEncoder`; each doubles the map, and the result is cropped to
    the image size (odd sides round up on the way down) and flattened."""

    def __init__(self, latent_dim, hidden_dims, image_shape):
        super().__init__()
        self.image_shape = tuple(int(v) for v in image_shape)
        channels, sizes = conv_plan(self.image_shape)
        self.start = (channels[-1], *sizes[-1])
        self.dense = nn.Sequential(
            MLPDecoder(latent_dim, hidden_dims, channels[-1] * sizes[-1][0] * sizes[-1][1]), nn.SiLU()
        )
        layers = []
        widths = channels[::-1]
        for n_in, n_out in zip(widths, widths[1:]):
            layers += [nn.ConvTranspose2d(n_in, n_out, kernel_size=4, stride=2, padding=1), nn.SiLU()]
        layers.append(nn.ConvTranspose2d(widths[-1], self.image_shape[0], kernel_size=4, stride=2, padding=1))
        self.deconv = nn.Sequential(*layers)

    def forward(self, z):
        lead = z.shape[:-1]
        h = self.dense(z).reshape(-1, *self.start)
        _, height, width = self.image_shape
        out = self.deconv(h)[:, :, :height, :width]
        return out.reshape(*lead, -1)


class VAE(nn.Module):
    """Variational autoencoder: encoder, decoder and likelihood head.

    The network works on flat rows of ``n_features`` values; architectures
    for structured inputs reshape inside their encoder and decoder.

    ``score_noise`` holds fixed standard normal draws of shape
    ``(n_score_samples, latent_dim)``.  Scoring reuses them for every row, so
    a row's ELBO estimate does not depend on which other rows share its
    batch, nor on how often it is scored.
    """

    def __init__(self, encoder, decoder, likelihood, latent_dim, n_score_samples=1, inner_width=1):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood
        self.latent_dim = latent_dim
        self.register_buffer("score_noise", torch.zeros(n_score_samples, latent_dim))
        self.inner_width = inner_width

    def chunk_rows(self, width):
        """Rows per chunk for inputs ``width`` values wide."""
        per_row = max(1, self.score_noise.shape[0] * max(width, self.inner_width))
        return int(np.clip(CHUNK_BUDGET // per_row, MIN_CHUNK_ROWS, MAX_CHUNK_ROWS))

    def map_chunks(self, fn, X):
        """Apply ``fn`` to row chunks of the float32 array or tensor ``X``.

        ``fn`` maps a (n, ...) tensor to a tensor or a tuple of tensors with
        n rows; the results come back concatenated as float64 numpy arrays.
        Every chunk is padded to the same height (:meth:`chunk_rows`), so
        that a row's result does not depend on its neighbours.
        """
        step = self.chunk_rows(X.shape[1])
        device = self.score_noise.device
        outputs = []
        with torch.inference_mode():
            for start in range(0, X.shape[0], step):
                rows = torch.as_tensor(X[start:start + step])
                n = rows.shape[0]
                # A fresh buffer from torch's allocator: aligned memory and
                # one shape for every call (see MIN_CHUNK_ROWS).
                chunk = torch.zeros((step, *rows.shape[1:]), device=device)
                chunk[:n] = rows
                result = fn(chunk)
                result = result if isinstance(result, tuple) else (result,)
                outputs.append([r[:n].double().cpu().numpy() for r in result])
        merged = tuple(np.concatenate(parts) for parts in zip(*outputs))
        return merged if len(merged) > 1 else merged[0]

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return self.decoder(z)

    def forward(self, x, eps):
        """Per-element terms of the negative ELBO.

        Parameters
        ----------
        x : tensor of shape (n, n_features)
        eps : tensor of shape (K, n or 1, latent_dim)
            Standard normal draws; ``K`` Monte-Carlo samples per row.

        Returns
        -------
        reconstruction_nll : tensor of shape (n, n_features)
            ``-log p(x|z)`` per feature, averaged over the K samples.
        kl : tensor of shape (n, latent_dim)
            KL(q(z|x) || N(0, I)) per latent dimension, in closed form.
        """
        mu, logvar = self.encode(x)
        z = elbo.reparameterize(mu, logvar, eps)
        reconstruction_nll = self.likelihood.expected_nll(x, self.decode(z))
        return reconstruction_nll, elbo.kl_standard_normal(mu, logvar)

    def importance_weighted_elbo(self, x):
        """Per-row importance-weighted bound on log p(x), using ``score_noise``."""
        mu, logvar = self.encode(x)
        eps = self.score_noise.unsqueeze(1)
        z = elbo.reparameterize(mu, logvar, eps)
        log_px = self.likelihood.log_prob(x, self.decode(z)).sum(-1)
        log_pz = elbo.standard_normal_log_prob(z).sum(-1)
        log_qz = (-0.5 * (elbo.LOG_2PI + logvar + eps**2)).sum(-1)
        return elbo.importance_weighted_bound((log_px + log_pz - log_qz).unbind(0))

    def latent_terms(self, x):
        """Posterior means E[z|x] and ``KL(q(z_d|x) || N(0, 1))`` per latent unit."""
        mu, logvar = self.encode(x)
        return mu, elbo.kl_standard_normal(mu, logvar)

    def score_contributions(self, x):
        """Per-feature reconstruction NLL and per-row KL, using ``score_noise``."""
        reconstruction_nll, kl = self(x, self.score_noise.unsqueeze(1))
        return reconstruction_nll, kl.sum(-1)

    def score_terms(self, x):
        """Per-row reconstruction NLL and KL, using the fixed ``score_noise``."""
        reconstruction_nll, kl = self.score_contributions(x)
        return reconstruction_nll.sum(-1), kl


def build_vae(config):
    """Build an untrained :class:`VAE` from a
    :class:`~anomvae.config.NetworkConfig`; the same configuration, stored
    with a fitted model, rebuilds the network so that its ``state_dict``
    can be loaded into it."""
    n_features, latent_dim, hidden_dims = config.n_features, config.latent_dim, list(config.hidden_dims)
    if config.architecture == "mlp":
        encoder = MLPEncoder(n_features, hidden_dims, latent_dim)
        decoder = MLPDecoder(latent_dim, hidden_dims[::-1], n_features)
    elif config.architecture == "conv":
        image_shape = list(config.image_shape or ())
        if math.prod(image_shape) != n_features:
            raise ValueError(f"image_shape {image_shape} does not hold {n_features} features")
        encoder = ConvEncoder(image_shape, hidden_dims, latent_dim)
        decoder = ConvDecoder(latent_dim, hidden_dims[::-1], image_shape)
    else:
        raise ValueError(f"unknown architecture {config.architecture!r}")
    if config.likelihood == "gaussian":
        floors = DEFAULT_MIN_VARIANCE if config.min_variance is None else list(config.min_variance)
        likelihood = GaussianLikelihood(n_features, floors)
    elif config.likelihood == "bernoulli":
        likelihood = BernoulliLikelihood()
    elif config.likelihood == "continuous_bernoulli":
        likelihood = ContinuousBernoulliLikelihood()
    else:
        raise ValueError(f"unknown likelihood {config.likelihood!r}")
    return VAE(encoder, decoder, likelihood, latent_dim, config.n_score_samples, max(config.inner_widths()))


def state_shapes(config):
    """The tensor names and shapes of the ``state_dict`` of
    ``build_vae(config)``, found without allocating them (the network is
    built on torch's ``meta`` device), so that a model file's weights can be
    checked against the network it describes before that is built."""
    with torch.device("meta"):
        module = build_vae(config)
    return {name: tuple(tensor.shape) for name, tensor in module.state_dict().items()}

"""Loss mathematics of the variational autoencoder, as pure tensor functions.

Everything here is in nats and element-wise unless a docstring says
otherwise, so that callers choose how to reduce (per row, per feature, per
pixel).  Nothing in this module holds state or parameters, which keeps each
term easy to test against its closed form.
"""

import math

import torch
from torch.nn import functional as F

LOG_2PI = math.log(2.0 * math.pi)


def reparameterize(mu, logvar, eps):
    """Draw ``z = mu + sigma * eps`` from q(z|x) given standard normal ``eps``.

    ``eps`` is passed in rather than drawn here so that training can use
    fresh noise from a seeded generator while scoring reuses fixed draws.
    """
    return mu + torch.exp(0.5 * logvar) * eps


def gaussian_log_prob(x, mean, logvar):
    """Element-wise log N(x | mean, exp(logvar))."""
    return -0.5 * (LOG_2PI + logvar + (x - mean) ** 2 * torch.exp(-logvar))


def gaussian_expected_nll(x, means, logvar):
    """``-log N(x | means[k], exp(logvar))`` averaged over the leading axis
    of ``means`` (K draws), element-wise.

    The same value as ``-gaussian_log_prob(x, means, logvar)`` averaged over
    the draws, up to rounding, but the squared errors are averaged before
    they are scaled, so the K draws cost two passes over the data instead
    of five. Summed element by element over the draws (never a vectorised
    reduction over the leading axis), so a row's result does not depend on
    the other rows.
    """
    squares = (x - means).square()
    # One draw (every training step) needs no averaging.
    mean_square = squares[0] if squares.shape[0] == 1 else sum(squares.unbind(0)) / squares.shape[0]
    return 0.5 * (LOG_2PI + logvar + mean_square * torch.exp(-logvar))


def bernoulli_log_prob(x, logits):
    """Element-wise log Bernoulli(x | sigmoid(logits)) for x in [0, 1].

    For x strictly between 0 and 1 this is the cross-entropy, the usual
    (unnormalised) Bernoulli likelihood of grey levels.
    """
    x = x.expand_as(logits)
    return -F.binary_cross_entropy_with_logits(logits, x, reduction="none")


def kl_standard_normal(mu, logvar):
    """Element-wise KL(N(mu, exp(logvar)) || N(0, 1)) in closed form.

    Summed over the latent dimensions it is KL(q(z|x) || p(z)) for a
    diagonal Gaussian posterior and a standard normal prior.
    """
    return 0.5 * (mu**2 + torch.exp(logvar) - 1.0 - logvar)


def negative_elbo(reconstruction_nll, kl, beta=1.0):
    """Negative ELBO ``-E_q[log p(x|z)] + beta * KL(q(z|x) || p(z))``.

    With ``beta=1`` this is the true negative evidence lower bound, an upper
    bound on ``-log p(x)``; other values give the beta-VAE training objective.
    """
    return reconstruction_nll + beta * kl


def standard_normal_log_prob(z):
    """Element-wise log N(z | 0, 1)."""
    return -0.5 * (LOG_2PI + z**2)


def importance_weighted_bound(log_weights):
    """Importance-weighted bound ``log (1/K sum_k exp(log_weights[k]))``.

    ``log_weights`` is a sequence of K tensors of equal shape, each
    ``log p(x|z_k) + log p(z_k) - log q(z_k|x)`` for one draw z_k ~ q(z|x).
    With K = 1 this is the single-sample ELBO; it tightens towards
    ``log p(x)`` as K grows (Burda et al., 2016). The log-sum-exp runs
    element by element over the sequence, so each row's value does not
    depend on the other rows computed with it.
    """
    log_weights = list(log_weights)
    peak = log_weights[0]
    for w in log_weights[1:]:
        peak = torch.maximum(peak, w)
    total = torch.zeros_like(peak)
    for w in log_weights:
        total = total + torch.exp(w - peak)
    return peak + torch.log(total) - math.log(len(log_weights))

def continuous_bernoulli_log_norm(logits):
    """Element-wise log-normaliser ``log C(lambda)`` of the continuous Bernoulli.

    With ``lambda = sigmoid(logits)`` the density on [0, 1] is
    ``C(lambda) * lambda**x * (1 - lambda)**(1 - x)``, where
    ``C(lambda) = 2 artanh(1 - 2 lambda) / (1 - 2 lambda)`` (2 at 1/2).  In
    terms of the logit ``l`` this is ``l / tanh(l / 2)``, computed here as
    ``log|l| - log(1 - exp(-|l|)) + log(1 + exp(-|l|))``, which is exact in
    floating point away from 0; near 0 its Taylor series ``log 2 + l**2 / 12``
    takes over, where the first form would divide 0 by 0.
    """
    magnitude = logits.abs()
    small = magnitude < 1e-3
    safe = torch.where(small, torch.ones_like(magnitude), magnitude)
    exact = torch.log(safe) - torch.log(-torch.expm1(-safe)) + torch.log1p(torch.exp(-safe))
    series = math.log(2.0) + logits**2 / 12.0
    return torch.where(small, series, exact)


def continuous_bernoulli_log_prob(x, logits):
    """Element-wise log density of the continuous Bernoulli for x in [0, 1].

    The Bernoulli cross-entropy term plus :func:`continuous_bernoulli_log_norm`,
    which makes it a proper density of grey levels (Loaiza-Ganem and
    Cunningham, "The continuous Bernoulli", NeurIPS 2019).
    """
    return bernoulli_log_prob(x, logits) + continuous_bernoulli_log_norm(logits)


def continuous_bernoulli_mean(logits):
    """Mean ``lambda / (2 lambda - 1) + 1 / (2 artanh(1 - 2 lambda))``, i.e.
    ``sigmoid(l) / (2 sigmoid(l) - 1) - 1 / l`` in logits; 1/2 + l/12 near 0."""
    small = logits.abs() < 1e-3
    safe = torch.where(small, torch.ones_like(logits), logits)
    p = torch.sigmoid(safe)
    exact = p / (2.0 * p - 1.0) - 1.0 / safe
    return torch.where(small, 0.5 + logits / 12.0, exact)

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

"""anomvae.model: the torch networks built by build_vae (MLP and convolutional),
their likelihood heads, gradients and importance-weighted bound."""

import math

import numpy as np
import pytest
import torch
from torch import distributions as D

from anomvae import elbo
from anomvae.config import NetworkConfig
from anomvae.model import GaussianLikelihood, build_vae


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 64, 64), (1, 7, 9), (3, 5, 1)])
def test_conv_network_maps_any_size_back_to_itself(shape):
    n_features = math.prod(shape)
    module = build_vae(NetworkConfig(architecture="conv", image_shape=shape, n_features=n_features,
                                     hidden_dims=(16,), latent_dim=3, likelihood="bernoulli"))
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())
    x = torch.rand(2, n_features)
    mu, logvar = module.encode(x)
    assert mu.shape == logvar.shape == (2, 3)
    assert module.decode(torch.randn(4, 2, 3)).shape == (4, 2, n_features)


def test_each_loss_component_moves_the_gradient_when_its_weight_changes(gen):
    """The KL term reaches the encoder: its gradient changes with beta."""
    config = NetworkConfig(architecture="mlp", n_features=4, hidden_dims=(8,), latent_dim=2, likelihood="gaussian")
    torch.manual_seed(0)
    module = build_vae(config)
    x = torch.randn(16, 4, generator=gen)
    eps = torch.randn(1, 16, 2, generator=gen)
    grads = []
    for beta in (0.0, 1.0, 2.0):
        module.zero_grad()
        reconstruction, kl = module(x, eps)
        elbo.negative_elbo(reconstruction.sum(-1), kl.sum(-1), beta).mean().backward()
        grads.append(module.encoder.logvar.weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1])
    # The loss is linear in beta, so the KL gradient adds up linearly.
    torch.testing.assert_close(grads[2] - grads[1], grads[1] - grads[0])


def test_gaussian_variance_floor_bounds_the_likelihood():
    head = GaussianLikelihood(3, min_variance=1e-3)
    with torch.no_grad():
        head.raw_variance.fill_(-1e4)  # as small as training could push it
    assert torch.all(head.logvar() >= math.log(1e-3) - 1e-6)
    best = head.log_prob(torch.zeros(1, 3), torch.zeros(1, 3))
    assert torch.all(best <= -0.5 * math.log(2 * math.pi * 1e-3) + 1e-4)


def test_gaussian_likelihood_starts_at_unit_variance():
    head = GaussianLikelihood(5)
    np.testing.assert_allclose(head.logvar().exp().detach().numpy(), 1.0, rtol=1e-5)


def test_importance_weighted_elbo_uses_the_right_densities(gen):
    """With one draw the bound is log p(x|z) + log p(z) - log q(z|x) at that z."""
    torch.manual_seed(0)
    module = build_vae(NetworkConfig(architecture="mlp", n_features=3, hidden_dims=(8,), latent_dim=2,
                                     likelihood="gaussian", n_score_samples=1))
    module.score_noise.normal_(generator=gen)
    x = torch.randn(5, 3, generator=gen)
    with torch.no_grad():
        mu, logvar = module.encode(x)
        z = mu + torch.exp(0.5 * logvar) * module.score_noise[0]
        loc = module.decode(z)
        variance = module.likelihood.logvar().exp()
        expected = (
            D.Normal(loc, variance.sqrt()).log_prob(x).sum(-1)
            + D.Normal(0.0, 1.0).log_prob(z).sum(-1)
            - D.Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
        )
        torch.testing.assert_close(module.importance_weighted_elbo(x), expected)


def test_a_far_out_row_left_out_of_the_loss_leaves_gradients_finite():
    # A row far outside the training data drives the encoder's
    # log-variance up; unbounded, exp(logvar) overflows, and although the
    # trimmed loss gives that row zero weight, backpropagation computes
    # 0 * inf = NaN for every parameter. Very negative log-variances are
    # left alone: nothing overflows there.
    torch.manual_seed(0)
    vae = build_vae(NetworkConfig(architecture="mlp", n_features=3, hidden_dims=(8,), latent_dim=2,
                                  likelihood="gaussian"))
    with torch.no_grad():
        vae.encoder.logvar.weight.fill_(1.0)
        vae.encoder.logvar.bias.zero_()
    x = torch.tensor([[0.1, -0.2, 0.3], [0.0, 0.1, -0.1], [1e3, 1e3, 1e3]])
    assert vae.encoder.logvar(vae.encoder.body(x))[2].min() > 200  # would overflow exp in float32
    reconstruction, kl = vae(x, torch.zeros(1, 3, 2))
    per_row = reconstruction.sum(-1) + kl.sum(-1)
    kept = per_row <= per_row.detach().kthvalue(2).values
    assert kept.tolist() == [True, True, False]
    per_row[kept].mean().backward()
    for name, p in vae.named_parameters():
        assert torch.isfinite(p.grad).all(), name
    with torch.no_grad():
        vae.encoder.logvar.weight.fill_(-1.0)
    assert vae.encode(x)[1][2].max() < -200  # not clipped from below


def test_silu_overwrites_its_input_only_when_no_gradient_is_recorded():
    from anomvae.model import _SiLU

    x = torch.linspace(-4, 4, 9)
    expected = torch.nn.functional.silu(x)
    with torch.no_grad():
        kept = x.clone()
        out = _SiLU()(kept)
    assert torch.equal(out, expected) and out.data_ptr() == kept.data_ptr()
    leaf = x.clone().requires_grad_()
    y = leaf * 1.0
    out = _SiLU()(y)
    assert torch.equal(out, expected) and torch.equal(y, x) and out.data_ptr() != y.data_ptr()
    out.sum().backward()  # the input SiLU's gradient needs is intact
    torch.testing.assert_close(leaf.grad, torch.sigmoid(x) * (1 + x * (1 - torch.sigmoid(x))))

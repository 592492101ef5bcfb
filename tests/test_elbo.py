"""anomvae.elbo: the loss terms against closed forms and torch.distributions."""

import math

import pytest
import torch
from torch import distributions as D

from anomvae import elbo


def test_kl_matches_torch_distributions(gen):
    mu = torch.randn(50, 4, generator=gen)
    logvar = torch.randn(50, 4, generator=gen)
    q = D.Normal(mu, torch.exp(0.5 * logvar))
    p = D.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    torch.testing.assert_close(elbo.kl_standard_normal(mu, logvar), D.kl_divergence(q, p))


def test_kl_is_zero_only_at_the_prior():
    zeros = torch.zeros(3, 2)
    assert torch.equal(elbo.kl_standard_normal(zeros, zeros), zeros)
    # KL(N(1, 1) || N(0, 1)) = 1/2 in closed form.
    assert elbo.kl_standard_normal(torch.ones(1), torch.zeros(1)).item() == pytest.approx(0.5)


def test_gaussian_log_prob_matches_normal(gen):
    x, mean, logvar = (torch.randn(20, 3, generator=gen) for _ in range(3))
    expected = D.Normal(mean, torch.exp(0.5 * logvar)).log_prob(x)
    torch.testing.assert_close(elbo.gaussian_log_prob(x, mean, logvar), expected)
    # Standard normal density at 0 is 1 / sqrt(2 pi).
    value = elbo.gaussian_log_prob(torch.zeros(1), torch.zeros(1), torch.zeros(1)).item()
    assert value == pytest.approx(-0.5 * math.log(2 * math.pi))


def test_bernoulli_log_prob_matches_bernoulli(gen):
    logits = torch.randn(30, 5, generator=gen)
    x = torch.bernoulli(torch.full((30, 5), 0.3), generator=gen)
    torch.testing.assert_close(elbo.bernoulli_log_prob(x, logits), D.Bernoulli(logits=logits).log_prob(x))


def test_reparameterize_has_the_posterior_moments(gen):
    mu, logvar = torch.tensor([2.0, -1.0]), torch.tensor([0.0, math.log(4.0)])
    z = elbo.reparameterize(mu, logvar, torch.randn(200_000, 2, generator=gen))
    torch.testing.assert_close(z.mean(0), mu, atol=0.02, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([1.0, 2.0]), atol=0.02, rtol=0)


def test_negative_elbo_weights_the_kl_term():
    reconstruction, kl = torch.tensor([3.0]), torch.tensor([2.0])
    assert elbo.negative_elbo(reconstruction, kl).item() == 5.0
    assert elbo.negative_elbo(reconstruction, kl, beta=0.5).item() == 4.0
    assert elbo.negative_elbo(reconstruction, kl, beta=0.0).item() == 3.0


def test_importance_weighted_bound_is_a_log_mean_exp(gen):
    log_weights = torch.randn(7, 30, generator=gen) * 5
    expected = torch.logsumexp(log_weights, dim=0) - math.log(7)
    torch.testing.assert_close(elbo.importance_weighted_bound(log_weights.unbind(0)), expected)
    # Jensen: never below the average log weight, equal to it for one draw.
    assert torch.all(elbo.importance_weighted_bound(log_weights.unbind(0)) >= log_weights.mean(0) - 1e-5)
    torch.testing.assert_close(elbo.importance_weighted_bound([log_weights[0]]), log_weights[0])


@pytest.mark.parametrize("scale", [1e-5, 1e-2, 0.5, 3.0, 10.0])
def test_continuous_bernoulli_matches_torch(scale):
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(200, generator=generator, dtype=torch.float64) * scale)
    x = torch.rand(200, generator=generator, dtype=torch.float64)
    expected = torch.distributions.ContinuousBernoulli(logits=logits).log_prob(x)
    assert torch.allclose(elbo.continuous_bernoulli_log_prob(x, logits), expected, rtol=1e-6, atol=1e-6)
    mean = torch.distributions.ContinuousBernoulli(logits=logits).mean
    assert torch.allclose(elbo.continuous_bernoulli_mean(logits), mean, rtol=1e-5, atol=1e-5)


def test_continuous_bernoulli_normaliser_at_large_logits():
    # torch clamps probabilities near 0 and 1 there; the closed form is l / tanh(l / 2).
    logits = torch.tensor([-200.0, -60.0, 60.0, 200.0], dtype=torch.float64)
    expected = torch.log(logits / torch.tanh(logits / 2))
    assert torch.allclose(elbo.continuous_bernoulli_log_norm(logits), expected, rtol=1e-12)
    assert torch.isfinite(elbo.continuous_bernoulli_log_norm(logits.float())).all()


def test_continuous_bernoulli_is_a_density():
    # Its integral over [0, 1] is 1 for any logit, unlike the cross-entropy's.
    x = torch.linspace(0.0, 1.0, 20001, dtype=torch.float64)
    for logit in (-8.0, -0.3, 0.0, 2.0):
        density = torch.exp(elbo.continuous_bernoulli_log_prob(x, torch.full_like(x, logit)))
        assert torch.trapezoid(density, x).item() == pytest.approx(1.0, abs=1e-6)


def test_gaussian_expected_nll_averages_the_draws(gen):
    x = torch.randn(50, 7, generator=gen, dtype=torch.float64)
    means = torch.randn(5, 50, 7, generator=gen, dtype=torch.float64)
    logvar = torch.randn(7, generator=gen, dtype=torch.float64)
    expected = -elbo.gaussian_log_prob(x, means, logvar).mean(0)
    torch.testing.assert_close(elbo.gaussian_expected_nll(x, means, logvar), expected, rtol=1e-12, atol=1e-12)
    # One draw: exactly the negative log-density.
    torch.testing.assert_close(
        elbo.gaussian_expected_nll(x, means[:1], logvar), -elbo.gaussian_log_prob(x, means[0], logvar)
    )

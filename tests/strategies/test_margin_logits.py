"""MarginSampling's mean-field score from logits equals the margin of the mean-field predictive."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bayesal import LastLayerLaplace
from bayesal.laplace.predictive import predictive_from_logits
from bayesal.strategies import MarginSampling


def _posterior(c, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(30, d, generator=g, dtype=torch.float64)
    return LastLayerLaplace(prior_precision=1.0).fit(x, torch.arange(30) % c, num_classes=c)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 40), c=st.integers(2, 12), seed=st.integers(0, 10_000), scale=st.sampled_from([0.1, 3.0, 40.0]),
       class_major=st.booleans())
def test_margin_from_logits_equals_the_predictive_margin(n, c, seed, scale, class_major):
    g = torch.Generator().manual_seed(seed)
    z = scale * torch.randn(n, c, generator=g, dtype=torch.float64)
    var = torch.rand(n, generator=g, dtype=torch.float64) * scale
    if class_major:  # the layout sequential selection caches its logits in
        z = z.T.contiguous().T
    post = _posterior(c)
    got = MarginSampling().score_logits(post, z, var, None)
    want = MarginSampling().score_probs(predictive_from_logits(z, var, post.lambda_mf, temperature=post.fitted_temperature))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert bool(((got >= -1e-15) & (got <= 1 + 1e-15)).all())


def test_margin_from_logits_keeps_nan_rows_nan():
    post = _posterior(3)
    z = torch.tensor([[0.2, float("nan"), 0.8], [0.1, 0.6, 0.3]], dtype=torch.float64)
    got = MarginSampling().score_logits(post, z, torch.tensor([0.5, float("nan")], dtype=torch.float64), None)
    assert torch.isnan(got).all()


def test_monte_carlo_margin_still_goes_through_the_predictive():
    post = _posterior(3)
    z = torch.randn(5, 3, dtype=torch.float64)
    var = torch.rand(5, dtype=torch.float64)
    a = MarginSampling(predictive="mc", n_samples=50).score_logits(post, z, var, torch.Generator().manual_seed(1))
    b = MarginSampling(predictive="mc", n_samples=50).score_probs(
        predictive_from_logits(z, var, post.lambda_mf, "mc", 50, torch.Generator().manual_seed(1),
                               post.fitted_temperature))
    assert torch.equal(a, b)


def test_margin_from_logits_with_full_logit_covariances():
    g = torch.Generator().manual_seed(3)
    post = _posterior(4)
    z = 3 * torch.randn(20, 4, generator=g, dtype=torch.float64)
    a = torch.randn(20, 4, 4, generator=g, dtype=torch.float64)
    cov = a @ a.transpose(1, 2)  # (N, C, C), as the full GGN gives
    got = MarginSampling().score_logits(post, z, cov, None)
    want = MarginSampling().score_probs(predictive_from_logits(z, cov, post.lambda_mf, temperature=post.fitted_temperature))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)

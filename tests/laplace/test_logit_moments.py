"""logit_moments: logits and logit variances of a block, optionally with float32 products."""

import numpy as np
import pytest
import torch

from bayesal.exceptions import InvalidInputError, NumericalError
from bayesal.laplace.posterior import LastLayerLaplace


def _post(toy):
    x, y, w, b = toy
    return LastLayerLaplace().fit(x, y, weight=w, bias=b), x


def test_float64_moments_equal_the_public_logits_and_variances(toy):
    post, x = _post(toy)
    z, v = post.logit_moments(x)
    assert torch.equal(z, post.logits(x)) and torch.equal(v, post.logit_variance(x))


def test_float32_moments_match_and_follow_updates(toy):
    post, x = _post(toy)
    x32 = x.float()
    z, v = post.logit_moments(x32, compute_dtype=torch.float32)
    assert z.dtype == torch.float32 and v.dtype == torch.float32
    torch.testing.assert_close(z.double(), post.logits(x32), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(v.double(), post.logit_variance(x32), rtol=1e-5, atol=1e-6)
    post.update(x[:3], toy[1][:3], inplace=True)  # the cached float32 state must not go stale
    z2, v2 = post.logit_moments(x32, compute_dtype=torch.float32)
    torch.testing.assert_close(v2.double(), post.logit_variance(x32), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(v2, v)


def test_moments_check_their_input(toy):
    post, x = _post(toy)
    bad = x.clone()
    bad[4, 1] = np.nan
    with pytest.raises(InvalidInputError, match="NaN|finite"):
        post.logit_moments(bad, compute_dtype=torch.float32)
    full = LastLayerLaplace(hessian="full").fit(x, toy[1], weight=toy[2], bias=toy[3])
    with pytest.raises(InvalidInputError, match="shared"):
        full.logit_moments(x)


@pytest.mark.parametrize("dtype", [torch.float32, None])
def test_moments_name_the_first_row_with_inf(toy, dtype):
    post, x = _post(toy)
    bad = x.clone() if dtype is None else x.float()
    bad[7, 0], bad[9, 2] = np.inf, -np.inf
    with pytest.raises(InvalidInputError, match="2 row.*first at row 7"):
        post.logit_moments(bad, compute_dtype=dtype)


def test_float32_overflow_is_a_clear_error_not_inf_scores(toy):
    x, y, w, b = toy
    # tiny training features and a weak prior: Σ ~ 1e9, so 1e15-scale rows overflow float32 variances
    post = LastLayerLaplace(prior_precision=1e-9).fit(x * 1e-10, y, weight=w, bias=b)
    big = torch.full((3, x.shape[1]), 1e15, dtype=torch.float32)
    with pytest.raises(NumericalError, match="overflow in float32"):
        post.logit_moments(big, compute_dtype=torch.float32)
    z, v = post.logit_moments(big.double())  # the posterior's dtype still copes
    assert bool(torch.isfinite(v).all())


def test_blocked_quadratic_forms_equal_the_dense_formula():
    from bayesal.laplace.linalg import row_quadratic_forms

    g = torch.Generator().manual_seed(1)
    a = torch.randn(7, 7, generator=g, dtype=torch.float64)
    x = torch.randn(2500, 7, generator=g, dtype=torch.float64)
    for block in (1, 64, 1024, 4096):
        torch.testing.assert_close(row_quadratic_forms(x, a, block), ((x @ a) * x).sum(1), rtol=1e-12, atol=1e-12)
    assert row_quadratic_forms(x[:0], a).shape == (0,)

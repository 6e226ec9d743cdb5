"""logit_moments: logits and logit variances of a block, optionally with float32 products."""

import numpy as np
import pytest
import torch

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
    with pytest.raises(ValueError, match="NaN|finite"):
        post.logit_moments(bad, compute_dtype=torch.float32)
    full = LastLayerLaplace(hessian="full").fit(x, toy[1], weight=toy[2], bias=toy[3])
    with pytest.raises(ValueError, match="shared"):
        full.logit_moments(x)

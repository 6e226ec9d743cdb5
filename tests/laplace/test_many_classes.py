"""Many classes: the shared covariance stays O(D² + C·D); dense (C·D)² objects are refused up front."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from bayesal.exceptions import InvalidInputError
from bayesal.laplace import MAX_DENSE_PARAMETERS, LastLayerLaplace
from bayesal.laplace.head import LBFGS_WORKSPACE_ELEMENTS, MIN_HISTORY_SIZE, lbfgs_history_size


def _given_head(c: int, d: int, seed: int = 0) -> LastLayerLaplace:
    gen = torch.Generator().manual_seed(seed)
    weight = torch.randn(c, d, generator=gen, dtype=torch.float64) * 0.1
    x = torch.randn(50, d, generator=gen, dtype=torch.float64) / d**0.5
    y = torch.randint(0, c, (50,), generator=gen)
    return LastLayerLaplace(prior_precision=1.0, spread=1.0, exact_until=0).fit(x, y, weight=weight, num_classes=c)


def test_full_ggn_refuses_sizes_above_the_limit_before_fitting() -> None:
    c, d = 1000, 768  # C·D = 768,000 parameters: a 4.3 TiB covariance
    x = np.zeros((3, d), dtype=np.float32)
    y = np.array([0, 1, 2])
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInputError, match="MAX_DENSE_PARAMETERS") as err:
            LastLayerLaplace(hessian="full", prior_precision=1.0).fit(x, y, num_classes=c)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    msg = str(err.value)
    assert f"{c * d}" in msg and f"{MAX_DENSE_PARAMETERS}" in msg and "hessian='shared'" in msg
    assert peak < 64 * 2**20  # refused before the head fit and the (P, P) matrices


def test_full_ggn_below_the_limit_still_fits() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(30, 4, generator=gen, dtype=torch.float64)
    y = torch.arange(30) % 3
    post = LastLayerLaplace(hessian="full", prior_precision=1.0).fit(x, y)
    assert post.covariance.shape == (12, 12)


def test_shared_weight_covariance_refuses_a_dense_kronecker_above_the_limit() -> None:
    post = _given_head(100, 200)  # C·D = 20,000 > the limit
    with pytest.raises(InvalidInputError, match="covariance"):
        post.weight_covariance()
    small = _given_head(3, 4)
    assert torch.equal(small.weight_covariance(), torch.kron(torch.eye(3, dtype=torch.float64), small.covariance.contiguous()))


def test_many_class_predictive_is_chunked_by_classes_and_written_in_place() -> None:
    c, d, n = 5000, 32, 3000
    post = _given_head(c, d)
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sizes: list[int] = []
    original = post._logit_cov_chunk

    def spy(chunk: torch.Tensor) -> torch.Tensor:
        sizes.append(chunk.shape[0])
        return original(chunk)

    post._logit_cov_chunk = spy  # type: ignore[method-assign]
    probs = post.predict_proba(x)
    # each chunk's (n, C) temporaries stay within the block budget (the chunk is sized by D + C, not D)
    assert max(sizes) * (c + d) <= (1 << 22)
    assert sum(sizes) == n
    ref = torch.softmax(post.logits(x) / torch.sqrt(1 + post.lambda_mf * post.logit_variance(x)).unsqueeze(1), 1)
    torch.testing.assert_close(probs, ref)


def test_one_point_update_with_many_classes_matches_the_absorbed_logit_step() -> None:
    c, d = 2000, 16
    post = _given_head(c, d)
    gen = torch.Generator().manual_seed(2)
    phi = torch.randn(d, generator=gen, dtype=torch.float64)
    label = 1500
    one = post.update(phi[None], torch.tensor([label]))  # the one-point path (outer product, scalar solve)
    target = torch.zeros(c, dtype=torch.float64)
    target[label] = 1.0
    absorbed = post.with_update_options().absorb(post.logit_step(phi, target))  # Sherman–Morrison, written out
    assert one.mean.shape == (c, d)
    torch.testing.assert_close(one.mean, absorbed.mean, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(one.covariance, absorbed.covariance, rtol=1e-9, atol=1e-12)


def test_lbfgs_history_is_shortened_only_for_heads_beyond_the_workspace_bound() -> None:
    assert lbfgs_history_size(768 * 1000 + 1000, 20) == 20  # C = 1,000, D = 768: unchanged
    big = 768 * 10000 + 10000  # C = 10,000
    m = lbfgs_history_size(big, 20)
    assert MIN_HISTORY_SIZE <= m < 20
    assert (2 * m + 5) * big <= LBFGS_WORKSPACE_ELEMENTS
    assert lbfgs_history_size(10**9, 20) == MIN_HISTORY_SIZE
    assert lbfgs_history_size(10**9, 3) == 3


def test_a_pending_mean_is_the_eager_update_to_the_bit_when_read_after_each_update() -> None:
    c, d = 300, 24
    post = _given_head(c, d)
    gen = torch.Generator().manual_seed(4)
    xs = torch.randn(6, d, generator=gen, dtype=torch.float64)
    ys = torch.randint(0, c, (6,), generator=gen)
    lazy = eager = post
    for i in range(6):
        lazy = lazy.update(xs[i : i + 1], ys[i : i + 1])
        assert not isinstance(lazy._mean_state, torch.Tensor)  # kept pending until read
        expected = torch.addr(eager.mean, *_mean_factors(eager, xs[i], ys[i]))
        eager = eager.update(xs[i : i + 1], ys[i : i + 1])
        assert torch.equal(lazy.mean, expected) and torch.equal(eager.mean, expected)
    # a chain of updates never read in between: one pending correction, equal up to round-off
    chain = post
    for i in range(6):
        chain = chain.update(xs[i : i + 1], ys[i : i + 1])
    assert chain._mean_state.rank == 6  # type: ignore[union-attr]
    torch.testing.assert_close(chain.predict_proba(xs), eager.predict_proba(xs), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(chain.mean, eager.mean, rtol=1e-10, atol=1e-12)


def _mean_factors(post: LastLayerLaplace, phi: torch.Tensor, label: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(a, b)`` with ``μ' = μ + a bᵀ`` for the one-point update of ``post``: its own Newton iteration,
    through the same products (what the eager update added to a dense mean)."""
    from bayesal.laplace.update import span_newton

    x = phi[None]
    left, kernel = post._span_products(x)
    target = torch.nn.functional.one_hot(label, post.num_classes).to(torch.float64)[None]
    res = span_newton(kernel, post._new_point_logits(x), target, post._span_curvature(), post.gamma, post.steps)
    return res.coef[0], left[0]

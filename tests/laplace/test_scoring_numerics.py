"""Numerics of pool scoring: variances through the low-rank form Σ = λ₀⁻¹ I − U Uᵀ, and predictives that do not depend on the thread count."""

import pytest
import torch

from bayesal import LastLayerLaplace
from bayesal.laplace import shared as posterior_module
from bayesal.laplace.linalg import isotropic_minus_low_rank, row_quadratic_forms, row_quadratic_forms_low_rank


def _posterior(n=30, d=64, c=4, seed=0, prior=0.5):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.arange(n) % c
    return LastLayerLaplace(prior_precision=prior, random_state=seed).fit(x, y, num_classes=c), g


def test_a_posterior_covariance_is_isotropic_minus_rank_of_its_points():
    post, _ = _posterior(n=30, d=64)
    u = isotropic_minus_low_rank(post.covariance, 1 / 0.5, max_rank=32)
    assert u is not None and u.shape == (64, 30)
    torch.testing.assert_close(2.0 * torch.eye(64, dtype=torch.float64) - u @ u.T, post.covariance, rtol=0, atol=1e-12)
    assert isotropic_minus_low_rank(post.covariance, 1 / 0.5, max_rank=29) is None  # rank 30 > 29
    updated = post.update(torch.randn(3, 64, dtype=torch.float64), torch.tensor([0, 1, 2]))
    assert isotropic_minus_low_rank(updated.covariance, 2.0, max_rank=40).shape == (64, 33)
    # a covariance with a direction above λ₀⁻¹ (not a posterior of this prior) has no such form
    assert isotropic_minus_low_rank(post.covariance, 1.0, max_rank=64) is None


def test_low_rank_quadratic_forms_equal_the_dense_ones():
    post, g = _posterior()
    u = isotropic_minus_low_rank(post.covariance, 2.0, max_rank=32)
    x = torch.randn(2500, 64, generator=g, dtype=torch.float64)
    dense = row_quadratic_forms(x, post.covariance)
    torch.testing.assert_close(row_quadratic_forms_low_rank(x, 2.0, u, block=256), dense, rtol=1e-12, atol=1e-12)
    x32, u32 = x.float(), u.float()
    torch.testing.assert_close(row_quadratic_forms_low_rank(x32, 2.0, u32).double(), dense, rtol=2e-6, atol=1e-6)
    assert row_quadratic_forms_low_rank(x[:0], 2.0, u).shape == (0,)


def test_logit_moments_of_a_large_block_take_the_low_rank_path_with_the_same_values(monkeypatch):
    post, g = _posterior(n=20, d=48)
    pool = torch.randn(3000, 48, generator=g, dtype=torch.float64)
    want_z, want_var = post.logits(pool), post.logit_variance(pool)
    calls = []
    real = posterior_module.row_quadratic_forms_low_rank
    monkeypatch.setattr(posterior_module, "row_quadratic_forms_low_rank",
                        lambda *a, **k: calls.append(a[0].shape[0]) or real(*a, **k))
    small_z, small_var = post.logit_moments(pool[:100])  # too few rows to pay for the eigendecomposition
    assert calls == []
    z, var = post.logit_moments(pool)
    assert calls == [3000]
    torch.testing.assert_close(z, want_z)
    torch.testing.assert_close(var, want_var, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(small_var, want_var[:100])
    z32, var32 = post.logit_moments(pool.float(), compute_dtype=torch.float32)
    torch.testing.assert_close(var32.double(), want_var, rtol=1e-5, atol=1e-6)
    # a posterior that has seen as many points as features keeps the dense form
    many, _ = _posterior(n=60, d=48, seed=1)
    calls.clear()
    many.logit_moments(pool)
    assert calls == []


def test_mean_field_probabilities_do_not_depend_on_the_thread_count():
    from bayesal.laplace.predictive import predictive_from_logits

    g = torch.Generator().manual_seed(3)
    before = torch.get_num_threads()
    for logits in (torch.randn(70001, 10, generator=g, dtype=torch.float64),
                   torch.randn(10, 70001, generator=g, dtype=torch.float64).T,  # class-major
                   torch.randn(301, 4, generator=g).float()):
        var = torch.rand(logits.shape[0], generator=g, dtype=logits.dtype)
        out = []
        try:
            for threads in (1, 2):
                torch.set_num_threads(threads)
                out.append(predictive_from_logits(logits, var, 0.4))
        finally:
            torch.set_num_threads(before)
        assert torch.equal(out[0], out[1])
        torch.testing.assert_close(out[0].sum(1), torch.ones_like(var))


@pytest.mark.parametrize("rows", [0, 1, 511, 512, 16384, 16385, 40000])
def test_tiled_rows_hold_the_rows_and_multiply_like_them(rows):
    from bayesal.laplace.linalg import TILE_ROWS, TiledRows

    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 7, generator=g)
    t = TiledRows.empty(rows, 7, torch.float32)
    for s in range(0, rows, 3001):  # writes that straddle tiles
        t.set_rows(s, x[s : s + 3001])
    assert t.shape == (rows, 7) and t.dtype == torch.float32 and t.width <= TILE_ROWS
    assert torch.equal(t.to_dense(), x)
    v = torch.randn(7, generator=g)
    torch.testing.assert_close(t @ v, x @ v, rtol=1e-5, atol=1e-5)
    assert bool((t.tiles[-1, :, rows - (t.tiles.shape[0] - 1) * t.width :] == 0).all())  # zero padding

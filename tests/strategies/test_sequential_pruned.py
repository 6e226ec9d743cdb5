"""Sequential selection with lazy re-scoring picks exactly what the plain loop picks."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bayesal import HeadConfig, LastLayerLaplace
from bayesal.exceptions import InvalidInputError
from bayesal.strategies import LabeledSet, LeastConfidence, MarginSampling, OracleSequential, Sequential


class CountingMargin(MarginSampling):
    """Margin sampling that counts the rows it scores."""

    def __init__(self):
        super().__init__()
        self.rows = 0

    def score_logits(self, posterior, logits, variance, generator):
        self.rows += logits.shape[0]
        return super().score_logits(posterior, logits, variance, generator)


def _problem(n, d, c, seed, normalise, curvature="gaussian", gamma=10.0, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=g, dtype=torch.float64) * spread
    y = torch.randint(c, (n + 40,), generator=g)
    x = centers[y] + torch.randn(n + 40, d, generator=g, dtype=torch.float64) * 0.7
    if normalise:  # like sentence embeddings (MiniLM is L2-normalised)
        x = x / x.norm(dim=1, keepdim=True)
    post = LastLayerLaplace(curvature=curvature, gamma=gamma, random_state=seed, prior_precision=1.0,
                            head_config=HeadConfig.paper()).fit(x[:40], y[:40], num_classes=c)
    return post, LabeledSet(x[:40], y[:40]), x[40:], y[40:]


def _pick(strategy, post, labeled, x, b, seed, labels=None):
    gen = torch.Generator().manual_seed(seed)
    if labels is not None:
        return strategy.query_with_labels(post, x, labeled, b, gen, labels)
    return strategy.query(post, x, labeled, b, gen)


@pytest.mark.parametrize("base_cls", [MarginSampling, LeastConfidence])
@pytest.mark.parametrize("update_with", ["expected", "most_likely", "sampled"])
@pytest.mark.parametrize("normalise", [True, False])
def test_pruned_picks_equal_the_plain_loop(base_cls, update_with, normalise):
    post, labeled, x, _ = _problem(1000, 32, 5, seed=3, normalise=normalise)
    plain = _pick(Sequential(base_cls(), update_with=update_with, prune=False), post, labeled, x, 25, 0)
    pruned = _pick(Sequential(base_cls(), update_with=update_with), post, labeled, x, 25, 0)
    assert pruned.indices.tolist() == plain.indices.tolist()
    torch.testing.assert_close(pruned.utilities, plain.utilities, rtol=0, atol=1e-12)


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(20, 100), c=st.integers(2, 6), b=st.integers(1, 12),
       gamma=st.sampled_from([0.0, 1.0, 10.0]), curvature=st.sampled_from(["gaussian", "categorical"]),
       normalise=st.booleans(), spread=st.sampled_from([0.2, 1.0, 3.0]))
def test_pruned_equals_plain_and_reinference_on_random_problems(seed, n, c, b, gamma, curvature, normalise, spread):
    post, labeled, x, y = _problem(n, 8, c, seed, normalise, curvature, gamma, spread)
    b = min(b, n)
    plain = _pick(OracleSequential(MarginSampling(), prune=False), post, labeled, x, b, seed, y)
    pruned = _pick(OracleSequential(MarginSampling()), post, labeled, x, b, seed, y)
    slow = _pick(OracleSequential(MarginSampling(), fast=False), post, labeled, x, b, seed, y)
    assert pruned.indices.tolist() == plain.indices.tolist() == slow.indices.tolist()


def test_duplicates_and_ties_go_to_the_lowest_index():
    post, labeled, x, _ = _problem(200, 8, 3, seed=5, normalise=True)
    x = torch.cat([x, x[:50]])  # every one of the first 50 rows twice
    plain = _pick(Sequential(MarginSampling(), prune=False), post, labeled, x, 30, 0)
    pruned = _pick(Sequential(MarginSampling()), post, labeled, x, 30, 0)
    assert pruned.indices.tolist() == plain.indices.tolist()


def test_pruning_rescores_a_fraction_of_the_pool():
    post, labeled, x, _ = _problem(3000, 64, 10, seed=2, normalise=True, spread=2.0)
    full, lazy = CountingMargin(), CountingMargin()
    a = _pick(Sequential(full, prune=False), post, labeled, x, 30, 0)
    b = _pick(Sequential(lazy), post, labeled, x, 30, 0)
    assert a.indices.tolist() == b.indices.tolist()
    assert full.rows == 30 * 3000
    assert lazy.rows < 0.5 * full.rows, (lazy.rows, full.rows)


def test_pruning_does_not_apply_to_scores_without_a_bound():
    from bayesal.strategies import EntropySampling

    assert EntropySampling().mean_field_lipschitz() is None
    assert MarginSampling(predictive="mc").mean_field_lipschitz() is None
    assert MarginSampling().mean_field_lipschitz() == 1.0 and LeastConfidence().mean_field_lipschitz() == 0.5


def test_strategies_that_need_every_row_accept_a_pool(tmp_path, monkeypatch):
    import numpy as np

    from bayesal.data import open_pool
    from bayesal.exceptions import InvalidInputError
    from bayesal.strategies import BADGE, CoreSet, _common

    post, labeled, x, _ = _problem(300, 8, 3, seed=4, normalise=True)
    np.save(tmp_path / "pool.npy", x.numpy())
    pool = open_pool(tmp_path / "pool.npy")
    for strategy in (Sequential(MarginSampling()), BADGE(), CoreSet()):
        want = _pick(strategy, post, labeled, x, 10, 0)
        got = _pick(strategy, post, labeled, pool, 10, 0)
        assert got.indices.tolist() == want.indices.tolist(), strategy
    monkeypatch.setattr(_common, "MAX_POOL_IN_MEMORY_BYTES", 1000)
    with pytest.raises(InvalidInputError, match="candidate subset"):
        _pick(BADGE(), post, labeled, pool, 10, 0)
    # a top-b score still streams the pool
    assert len(_pick(MarginSampling(), post, labeled, pool, 10, 0).indices) == 10


@pytest.mark.parametrize("prune", [True, False])
def test_float32_products_pick_what_float64_products_pick(prune):
    post, labeled, x, y = _problem(2000, 48, 6, seed=4, normalise=True)
    exact = _pick(OracleSequential(MarginSampling(), prune=prune), post, labeled, x, 20, 0, y)
    low = _pick(OracleSequential(MarginSampling(), prune=prune, compute_dtype=torch.float32), post, labeled, x, 20, 0, y)
    assert low.indices.tolist() == exact.indices.tolist()
    assert low.utilities.dtype == torch.float64
    torch.testing.assert_close(low.utilities, exact.utilities, rtol=1e-5, atol=1e-6)


def test_float32_products_pruned_equals_plain_loop():
    post, labeled, x, _ = _problem(1500, 32, 5, seed=8, normalise=False)
    kw = {"update_with": "expected", "compute_dtype": torch.float32}
    plain = _pick(Sequential(MarginSampling(), prune=False, **kw), post, labeled, x, 25, 0)
    pruned = _pick(Sequential(MarginSampling(), **kw), post, labeled, x, 25, 0)
    assert pruned.indices.tolist() == plain.indices.tolist()
    torch.testing.assert_close(pruned.utilities, plain.utilities, rtol=0, atol=1e-12)


def test_compute_dtype_is_checked():
    with pytest.raises(InvalidInputError, match="compute_dtype"):
        Sequential(MarginSampling(), compute_dtype="float32")
    with pytest.raises(InvalidInputError, match="compute_dtype"):
        OracleSequential(MarginSampling(), compute_dtype=torch.int32)


def test_tiled_copy_and_moments_equal_the_row_major_ones():
    from bayesal.strategies._common import tiled_moments

    post, _, x, _ = _problem(103, 12, 4, seed=9, normalise=True)
    xc, z, var = tiled_moments(post, x, torch.float32, block=16)  # blocks do not divide the rows
    assert xc.shape == x.shape and xc.dtype == torch.float32
    assert torch.equal(xc.to_dense(), x.to(torch.float32))
    want_z, want_var = post.logit_moments(x.to(torch.float32), compute_dtype=torch.float32)
    assert z.dtype == var.dtype == x.dtype
    torch.testing.assert_close(z, want_z.double(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(var, want_var.double(), rtol=1e-6, atol=1e-6)
    v = torch.randn(12, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(xc @ v, x.to(torch.float32) @ v)  # products as from the row-major copy


def test_float32_candidates_are_kept_as_given_with_float32_products():
    """A float32 pool is not copied to the posterior's dtype: each pick's row is exact when upcast, so
    the picks and utilities equal those of the same pool handed over in float64."""
    post, labeled, x, _ = _problem(1200, 24, 4, seed=10, normalise=True)
    x32 = x.to(torch.float32)
    strategy = Sequential(MarginSampling(), update_with="most_likely", compute_dtype=torch.float32)
    got = _pick(strategy, post, labeled, x32, 15, 0)
    want = _pick(strategy, post, labeled, x32.double(), 15, 0)
    assert got.indices.tolist() == want.indices.tolist()
    assert got.utilities.dtype == torch.float64
    torch.testing.assert_close(got.utilities, want.utilities, rtol=0, atol=0)
    assert strategy.last_posterior_.mean.dtype == torch.float64
    bad = x32.clone()
    bad[7, 3] = float("nan")
    with pytest.raises(InvalidInputError, match="row 7"):
        _pick(strategy, post, labeled, bad, 5, 0)


def test_rows_that_may_all_still_win_are_rescored_in_place_with_the_same_picks():
    """On a noise-dominated pool nearly every row can still win after a pick; the loop then scores all
    rows at once (no gathering) and must still pick what the plain loop picks."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(3000, 64, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    y = torch.randint(5, (3000,), generator=g)
    post = LastLayerLaplace(prior_precision=1.0, random_state=0).fit(x[:60], y[:60], num_classes=5)
    counting = CountingMargin()
    pruned = _pick(Sequential(counting, update_with="most_likely"), post, None, x[60:], 12, 0)
    plain = _pick(Sequential(MarginSampling(), update_with="most_likely", prune=False), post, None, x[60:], 12, 0)
    assert pruned.indices.tolist() == plain.indices.tolist()
    torch.testing.assert_close(pruned.utilities, plain.utilities, rtol=0, atol=1e-12)
    assert counting.rows > 5 * x[60:].shape[0]  # several whole-pool re-scorings took place


def test_tiled_moments_name_the_pool_row_with_nan():
    from bayesal.strategies._common import tiled_moments

    post, _, x, _ = _problem(103, 12, 4, seed=9, normalise=True)
    bad = x.to(torch.float32)
    bad[37, 5] = float("inf")
    with pytest.raises(InvalidInputError, match="candidates contain NaN or inf in 1 row.*row 37"):
        tiled_moments(post, bad, torch.float32, block=16)  # row 37 lies in the third block


def test_scoring_all_rows_in_blocks_equals_scoring_them_at_once(monkeypatch):
    import bayesal.strategies.sequential as sequential

    post, labeled, x, _ = _problem(700, 16, 4, seed=12, normalise=True)
    want = _pick(Sequential(MarginSampling(), update_with="most_likely"), post, labeled, x, 10, 0)
    monkeypatch.setattr(sequential, "SCORE_BLOCK", 64)  # 11 blocks, the last one short
    got = _pick(Sequential(MarginSampling(), update_with="most_likely"), post, labeled, x, 10, 0)
    assert got.indices.tolist() == want.indices.tolist()
    torch.testing.assert_close(got.utilities, want.utilities, rtol=0, atol=1e-15)
    z, var = post.logits(x), post.logit_variance(x)
    # the same values up to the last bit of a vectorised block's tail
    torch.testing.assert_close(sequential._score_all(MarginSampling(), post, z, var, None),
                               MarginSampling().score_logits(post, z, var, None), rtol=0, atol=1e-15)


def test_best_alive_row_skips_picked_rows_even_when_every_score_is_nan():
    from bayesal.strategies.sequential import _best_alive

    alive = torch.tensor([False, True, True, False])
    assert _best_alive(torch.tensor([9.0, 1.0, 3.0, 7.0]), alive) == 2
    assert _best_alive(torch.tensor([9.0, 3.0, 3.0, 7.0]), alive) == 1  # ties: the lowest index
    assert _best_alive(torch.tensor([9.0, float("nan"), float("nan"), 7.0]), alive) == 1
    assert _best_alive(torch.tensor([9.0, float("nan"), 0.5, 7.0]), alive) == 2  # NaN counts as lowest

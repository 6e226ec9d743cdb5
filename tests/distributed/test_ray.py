"""Distributed scoring and featurisation on a real local Ray instance equal the single-process results."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bayesal.data import featurize_to_shards, open_pool
from bayesal.data.backbones import TorchModuleBackbone
from bayesal.distributed import featurize_with_ray, pool_parts, score_pool
from bayesal.exceptions import InvalidInputError
from bayesal.laplace.posterior import LastLayerLaplace
from bayesal.strategies import BADGE, BALD, EntropySampling, MarginSampling
from bayesal.strategies.pool_scoring import TopK, merge_top_k


def _problem(n=3000, d=16, c=4, seed=0):
    g = np.random.default_rng(seed)
    centers = g.normal(size=(c, d)) * 2
    y = g.integers(0, c, size=n)
    x = (centers[y] + g.normal(size=(n, d))).astype(np.float32)
    post = LastLayerLaplace(prior_precision=1.0, random_state=0).fit(x[:60].astype(np.float64), y[:60],
                                                                      num_classes=c)
    return x, y, post


@pytest.fixture(scope="module")
def problem():
    return _problem()


@pytest.fixture
def shard_dir(tmp_path, problem):
    x = problem[0]
    d = tmp_path / "shards"
    d.mkdir()
    for k, (s, e) in enumerate([(0, 1000), (1000, 1700), (1700, 3000)]):
        np.save(d / f"part-{k}.npy", x[s:e])
    return d


def test_merge_of_any_partition_equals_the_global_top_k():
    g = np.random.default_rng(1)
    scores = g.integers(0, 20, size=500).astype(np.float64)  # many ties
    scores[::37] = np.nan
    idx = np.arange(500)
    want = np.lexsort((idx, -np.where(np.isnan(scores), -np.inf, scores)))[:25]
    cuts = np.sort(g.choice(np.arange(1, 500), size=6, replace=False))
    parts = [(idx[a:b], scores[a:b]) for a, b in zip(np.r_[0, cuts], np.r_[cuts, 500])]
    got, _ = merge_top_k(parts, 25)
    np.testing.assert_array_equal(got, want)
    run = TopK(25)
    for a, b in zip(np.r_[0, cuts], np.r_[cuts, 500]):
        run.push(idx[a:b], scores[a:b])
    np.testing.assert_array_equal(run.result()[0], want)


def test_local_pool_scoring_equals_in_memory_top_b(problem, shard_dir):
    x, _, post = problem
    gen = torch.Generator().manual_seed(0)
    want = MarginSampling().query(post, torch.from_numpy(x), None, 50, gen)
    # a float64 pool is scored in float64: the same top-b as in memory
    got = score_pool(MarginSampling(), post, x.astype(np.float64), 50, chunk_rows=256, n_parts=3)
    np.testing.assert_array_equal(got.indices.numpy(), want.indices.numpy())
    np.testing.assert_allclose(got.utilities.numpy(), want.utilities.numpy(), rtol=1e-12)
    # a float32 pool is multiplied in float32: the same scores up to float32 round-off
    pool = open_pool(shard_dir)
    fast = score_pool(MarginSampling(), post, pool, 50, chunk_rows=256)
    exact = MarginSampling().scores(post, torch.from_numpy(x), None).numpy()
    # (1 − margin of a confident row cancels: float32 round-off is absolute there)
    np.testing.assert_allclose(fast.utilities.numpy(), exact[fast.indices.numpy()], rtol=1e-5, atol=1e-6)
    assert fast.utilities.numpy()[-1] >= np.sort(exact)[-50] - 1e-5  # nothing better was left out
    # the strategy itself accepts the pool (single process, chunked)
    via_query = MarginSampling().query(post, pool, None, 50, gen)
    np.testing.assert_array_equal(via_query.indices.numpy(), fast.indices.numpy())
    with pytest.raises(InvalidInputError, match="ScoreStrategy"):
        score_pool(BADGE(), post, pool, 5)
    with pytest.raises(InvalidInputError, match="backend"):
        score_pool(MarginSampling(), post, pool, 5, backend="dask")


def test_ray_scoring_equals_local_exactly(ray_local, problem, shard_dir):
    x, _, post = problem
    pool = open_pool(shard_dir)
    assert len(pool_parts(pool)) == 3
    for strategy, kw in [(MarginSampling(), {}), (EntropySampling(), {"n_parts": 5}), (BALD(n_samples=20), {})]:
        local = score_pool(strategy, post, pool, 40, backend="local", chunk_rows=300, **kw)
        dist = score_pool(strategy, post, pool, 40, backend="ray", chunk_rows=300, **kw)
        assert torch.equal(local.indices, dist.indices), strategy
        assert torch.equal(local.utilities, dist.utilities), strategy
    # an in-memory pool is split into parts that travel with the tasks
    arr_local = score_pool(MarginSampling(), post, x, 10, backend="local", n_parts=2)
    arr_dist = score_pool(MarginSampling(), post, x, 10, backend="ray", n_parts=2)
    assert torch.equal(arr_local.indices, arr_dist.indices)


class _Frozen(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 8, 3)
        self.fc = torch.nn.Linear(8, 6)

    def forward(self, x):
        h = torch.relu(self.conv(x.float().unsqueeze(1) / 255.0)).mean(dim=(2, 3))
        return self.fc(h)


def test_ray_data_featurisation_equals_local_and_resumes(ray_local, tmp_path):
    import shutil

    images = np.random.default_rng(0).integers(0, 256, size=(230, 12, 12), dtype=np.uint8)
    backbone = TorchModuleBackbone(_Frozen(), name="frozen-conv", dim=6)
    local = featurize_to_shards(backbone, images, tmp_path / "local", shard_rows=150, batch_size=32, progress=False)
    # the first shard is already on disk (an interrupted earlier run): kept; Ray computes the second
    (tmp_path / "ray").mkdir()
    for name in ("manifest.json", "shard-000000.npy"):
        shutil.copy2(tmp_path / "local" / name, tmp_path / "ray" / name)
    before = (tmp_path / "ray" / "shard-000000.npy").stat().st_mtime_ns
    dist = featurize_with_ray(backbone, images, tmp_path / "ray", num_workers=2, shard_rows=150, batch_size=32,
                              progress=False)
    assert len(dist.shards()) == 2
    assert (tmp_path / "ray" / "shard-000000.npy").stat().st_mtime_ns == before
    np.testing.assert_allclose(dist.to_numpy(), local.to_numpy(), rtol=1e-5, atol=1e-6)
    fresh = backbone.encode(images[150:], batch_size=32, progress=False)
    np.testing.assert_allclose(dist.read(150, 230), fresh, rtol=1e-5, atol=1e-6)

"""Top-b of a row-wise score over a sharded pool, per shard (locally or as Ray tasks), merged exactly."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bayesal.data import Pool, open_pool
from bayesal.exceptions import InvalidInputError, MissingDependencyError
from bayesal.laplace import LastLayerLaplace
from bayesal.strategies import QueryResult, ScoreStrategy, check_batch_size, merge_top_k, shard_top_k

__all__ = ["score_pool", "pool_parts", "BACKENDS"]

BACKENDS = ("local", "ray")


def pool_parts(pool: Pool, n_parts: int | None = None) -> list[tuple[int, Pool]]:
    """``(row offset, part)`` of the units of work: the pool's shards, or ``n_parts`` contiguous
    slices when given (a single-file pool is one part unless ``n_parts`` says otherwise)."""
    parts = pool.split(n_parts) if n_parts is not None else pool.shards()
    out, offset = [], 0
    for p in parts:
        out.append((offset, p))
        offset += len(p)
    return out


def _part_generator(seed: int | None, k: int) -> torch.Generator | None:
    """Per-part generator for stochastic scores, the same in every backend (``None``: unseeded)."""
    if seed is None:
        return None
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + k)


def _part_top_k(state: dict[str, Any], strategy: ScoreStrategy, part: Pool, k: int, offset: int,
                chunk_rows: int | None, seed: int | None, index: int) -> tuple[np.ndarray, np.ndarray]:
    posterior = LastLayerLaplace.from_state_dict(state)
    return shard_top_k(strategy, posterior, part, k, offset=offset, chunk_rows=chunk_rows,
                       generator=_part_generator(seed, index))


def _ray() -> Any:
    try:
        import ray
    except ImportError as err:
        raise MissingDependencyError(f"backend='ray' needs Ray ({err}); install it with `pip install bayesal[ray]`") from err
    if not ray.is_initialized():  # a local instance on this machine; call ray.init(address=...) first for a cluster
        ray.init(include_dashboard=False, log_to_driver=False)
    return ray


def score_pool(
    strategy: ScoreStrategy,
    posterior: LastLayerLaplace,
    pool: Any,
    batch_size: int,
    *,
    backend: str = "local",
    n_parts: int | None = None,
    chunk_rows: int | None = None,
    seed: int | None = 0,
) -> QueryResult:
    """Top-``batch_size`` rows of ``strategy``'s score over ``pool``, shard by shard.

    Parameters
    ----------
    strategy
        A row-wise :class:`~bayesal.strategies.score.ScoreStrategy` (margin, entropy, BALD, ...).
    posterior
        The fitted posterior; its state is sent once per query (``ray.put``) and rebuilt per task.
    pool
        A :class:`~bayesal.data.pool.Pool` or anything :func:`~bayesal.data.pool.open_pool` reads
        (a ``.npy`` file, a shard directory, Zarr, an array). With Ray, its files must be readable
        from every node.
    backend
        ``"local"`` (this process, one part after another) or ``"ray"`` (one task per part; uses the
        running Ray instance, else starts a local one).
    n_parts
        Split into this many contiguous parts instead of the pool's own shards.
    chunk_rows
        Rows scored at a time inside a part (memory ``O(chunk_rows · D)`` per worker).
    seed
        Seeds the per-part generators of stochastic scores (Monte Carlo), identically in both backends.

    Returns
    -------
    QueryResult
        Global row indices ``(b,)`` (best first; ties to the lower row) and their scores. The same
        parts give bit-identical results in both backends.
    """
    if backend not in BACKENDS:
        raise InvalidInputError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
    if not isinstance(strategy, ScoreStrategy):
        raise InvalidInputError(f"score_pool needs a row-wise ScoreStrategy, got {type(strategy).__name__}")
    pool = open_pool(pool)
    b = check_batch_size(batch_size, len(pool))
    parts = pool_parts(pool, n_parts)
    state = posterior.state_dict()
    if backend == "local":
        results = [_part_top_k(state, strategy, part, b, off, chunk_rows, seed, k) for k, (off, part) in enumerate(parts)]
    else:
        ray = _ray()
        remote = ray.remote(num_cpus=1)(_part_top_k)
        state_ref, strategy_ref = ray.put(state), ray.put(strategy)  # broadcast once, shared by all tasks
        futures = [remote.remote(state_ref, strategy_ref, part, b, off, chunk_rows, seed, k)
                   for k, (off, part) in enumerate(parts)]
        results = ray.get(futures)
    idx, sc = merge_top_k(results, b)
    return QueryResult(torch.from_numpy(idx.copy()), torch.from_numpy(sc.copy()).to(posterior.dtype))

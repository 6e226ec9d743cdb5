"""Featurisation of a large corpus with Ray Data: ``map_batches`` over an actor pool that holds the
frozen backbone, shard by shard into resumable ``.npy`` shards."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from bayesal.data import ShardedPool, featurize_to_shards
from bayesal.exceptions import MissingDependencyError

__all__ = ["featurize_with_ray"]


class _Encoder:
    """Ray Data actor: loads the backbone once, encodes batches of row indices into the shard's items."""

    def __init__(self, backbone: Any, items_refs: list[Any], batch_size: int) -> None:
        import ray

        self.backbone = backbone
        self.items = ray.get(items_refs[0])
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        idx = np.asarray(batch["id"], dtype=np.int64)
        chunk: Any
        if isinstance(self.items, np.ndarray):
            chunk = self.items[idx]
        else:
            chunk = [self.items[i] for i in idx]
        feats = self.backbone.encode(chunk, batch_size=self.batch_size, progress=False)
        return {"id": idx, "features": np.asarray(feats, dtype=np.float32)}


def featurize_with_ray(
    backbone: Any,
    items: Sequence[Any] | np.ndarray,
    out_dir: str | os.PathLike,
    *,
    num_workers: int = 2,
    shard_rows: int = 10_000,
    batch_size: int = 64,
    progress: bool = True,
    hash_parts: Sequence[Any] | None = None,
) -> ShardedPool:
    """Like :func:`bayesal.data.featurize_to_shards`, each shard encoded by ``num_workers`` Ray actors.

    Each shard's items are put in the object store once; Ray Data streams row indices through
    ``map_batches`` to the actors (the backbone loaded once per actor, eval mode, no gradients) and the
    features are put back in row order. Finished shards survive an interruption; a rerun (with or
    without Ray) continues with the missing ones. Uses the running Ray instance, else starts a local one.
    """
    try:
        import ray
        import ray.data
    except ImportError as err:
        raise MissingDependencyError(f"featurize_with_ray needs Ray ({err}); install it with `pip install bayesal[ray]`") from err
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # our own bar counts shards
    cpus = float(ray.available_resources().get("CPU", 1.0))
    # leave room for Ray Data's own read tasks, or the actors can hold every CPU and stall the pipeline
    actor_cpus = max(0.1, min(1.0, (cpus - 1.0) / num_workers))

    def encode_shard(shard_items: Any) -> np.ndarray:
        n = len(shard_items)
        ref = ray.put(shard_items if isinstance(shard_items, np.ndarray) else list(shard_items))
        ds = ray.data.range(n).map_batches(
            _Encoder,
            fn_constructor_args=(backbone, [ref], batch_size),
            batch_size=batch_size,
            compute=ray.data.ActorPoolStrategy(size=num_workers),
            num_cpus=actor_cpus,
        )
        out = np.empty((n, backbone.dim), dtype=np.float32) if backbone.dim else None
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
            if out is not None:
                out[batch["id"]] = batch["features"]
            else:
                parts.append((batch["id"], batch["features"]))
        if out is None:
            order = np.concatenate([p[0] for p in parts])
            feats = np.concatenate([p[1] for p in parts])
            out = np.empty_like(feats)
            out[order] = feats
        return out

    return featurize_to_shards(backbone, items, out_dir, shard_rows=shard_rows, batch_size=batch_size,
                               hash_parts=hash_parts, progress=progress, encode=encode_shard)

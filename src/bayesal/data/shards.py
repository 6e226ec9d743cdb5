"""Resumable featurisation of a large corpus into a directory of ``.npy`` shards.

``featurize_to_shards(backbone, items, out_dir)`` encodes ``items`` shard by shard and writes each shard
atomically (temporary file + ``os.replace``) as soon as it is done, next to a ``manifest.json`` that
records what the directory holds (number of items, shard size, backbone config, a content hash of the
items). Run it again after an interruption and it skips the finished shards; a directory written for
other items or another backbone is refused rather than mixed. A tqdm bar shows rows done and the ETA.
The result is a :class:`~bayesal.data.pool.ShardedPool` over the shards.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bayesal.exceptions import DataFileError, InvalidInputError
from bayesal.utils import atomic_write

from .pool import MANIFEST_NAME, NpyPool, ShardedPool, shard_name, shard_plan

__all__ = ["featurize_to_shards", "missing_rows", "shard_plan", "ShardManifest", "MANIFEST_NAME"]

SHARD_FORMAT = 1


class ShardManifest:
    """What a shard directory holds; two manifests agree when they describe the same featurisation."""

    def __init__(self, n_items: int, shard_rows: int, config: dict[str, Any], digest: str) -> None:
        self.n_items, self.shard_rows, self.config, self.digest = int(n_items), int(shard_rows), config, digest

    def to_json(self) -> dict[str, Any]:
        return {"format": SHARD_FORMAT, "n_items": self.n_items, "shard_rows": self.shard_rows,
                "backbone": self.config, "content_sha256": self.digest}

    @classmethod
    def read(cls, path: Path) -> ShardManifest:
        try:
            raw = json.loads(path.read_text())
            return cls(raw["n_items"], raw["shard_rows"], raw["backbone"], raw["content_sha256"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataFileError(f"{path}: unreadable shard manifest ({err}); delete the directory to start over") from err

    def same_as(self, other: ShardManifest) -> bool:
        return self.to_json() == other.to_json()


def _shard_done(path: Path, rows: int, dim: int | None) -> bool:
    """Whether ``path`` is a complete shard of ``rows`` rows (a torn or foreign file is redone)."""
    if not path.exists():
        return False
    try:
        pool = NpyPool(path)
    except DataFileError:
        return False
    return pool.n_rows == rows and (dim is None or pool.dim == dim)


def missing_rows(out_dir: str | os.PathLike, n_items: int, shard_rows: int, dim: int | None = None) -> int:
    """Rows of ``n_items`` whose shard is not complete yet in ``out_dir`` (``n_items`` for a new directory)."""
    out = Path(out_dir)
    if not (out / MANIFEST_NAME).exists():
        return n_items
    return sum(e - s for k, (s, e) in enumerate(shard_plan(n_items, shard_rows))
               if not _shard_done(out / shard_name(k), e - s, dim))


def _check_block(feats: np.ndarray, rows: int, dim: int | None, name: str) -> None:
    if feats.ndim != 2 or feats.shape[0] != rows or (dim is not None and feats.shape[1] != dim):
        raise DataFileError(f"backbone {name} returned shape {feats.shape} for {rows} items")


def _save_npy(path: Path, array: np.ndarray) -> None:
    atomic_write(path, lambda fh: np.save(fh, array), permissions=0o644)


def featurize_to_shards(
    backbone: Any,
    items: Sequence[Any] | np.ndarray,
    out_dir: str | os.PathLike,
    *,
    shard_rows: int = 10_000,
    batch_size: int = 64,
    hash_parts: Sequence[Any] | None = None,
    progress: bool = True,
    encode: Callable[[Sequence[Any] | np.ndarray], np.ndarray] | None = None,
) -> ShardedPool:
    """Encode ``items`` with ``backbone`` into ``out_dir/shard-NNNNNN.npy`` files; resumes where it stopped.

    Parameters
    ----------
    backbone
        A :class:`~bayesal.data.backbones.Backbone` (``name``, ``dim``, ``config()``, ``encode``).
    items
        Anything sliceable with ``items[start:stop]`` and ``len`` (a list of texts, an image array).
    out_dir
        Directory of the shards and ``manifest.json`` (created if missing).
    shard_rows
        Rows per shard: the work lost by an interruption is at most one shard.
    hash_parts
        What identifies the items in the manifest (default: the items themselves).
    encode
        Optional encoder of one whole shard ``items[start:stop] -> (n, D)`` in place of batched
        ``backbone.encode`` calls (e.g. :func:`bayesal.distributed.featurize_with_ray`).

    Returns
    -------
    ShardedPool
        The features ``(len(items), D)`` float32, read from the shards.
    """
    from tqdm.auto import tqdm

    from .cache import content_hash

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = len(items)
    if n == 0:
        raise InvalidInputError("no items to featurise (the input is empty)")
    parts = list(hash_parts) if hash_parts is not None else [items]
    manifest = ShardManifest(n, shard_rows, backbone.config(), content_hash(backbone.config(), *parts))
    mpath = out / MANIFEST_NAME
    if mpath.exists():
        found = ShardManifest.read(mpath)
        if not found.same_as(manifest):
            raise DataFileError(
                f"{out}: holds shards of other items or another backbone (manifest differs); pass an empty "
                "directory or delete this one"
            )
    else:
        atomic_write(mpath, lambda fh: fh.write(json.dumps(manifest.to_json(), indent=1).encode()), permissions=0o644)
    plan = shard_plan(n, shard_rows)
    dim = getattr(backbone, "dim", None)
    todo = [(k, s, e) for k, (s, e) in enumerate(plan) if not _shard_done(out / shard_name(k), e - s, dim)]
    done_rows = n - sum(e - s for _, s, e in todo)
    t0 = time.perf_counter()
    with tqdm(total=n, initial=done_rows, desc=f"{backbone.name} shards", unit="item", disable=not progress,
              smoothing=0.05) as bar:
        for k, s, e in todo:
            if encode is not None:  # a whole shard at once (e.g. spread over Ray workers)
                feats = np.asarray(encode(items[s:e]), dtype=np.float32)
                _check_block(feats, e - s, dim, backbone.name)
                bar.update(e - s)
            else:
                pieces = []
                # several batches per encode call: text backbones sort a call by length to pad little
                step = 8 * batch_size
                for b0 in range(s, e, step):
                    b1 = min(e, b0 + step)
                    f = np.asarray(backbone.encode(items[b0:b1], batch_size=batch_size, progress=False),
                                   dtype=np.float32)
                    _check_block(f, b1 - b0, dim, backbone.name)
                    pieces.append(f)
                    bar.update(b1 - b0)
                feats = np.concatenate(pieces)
            _save_npy(out / shard_name(k), np.ascontiguousarray(feats))
    seconds = time.perf_counter() - t0
    pool = ShardedPool([NpyPool(out / shard_name(k)) for k in range(len(plan))])
    if todo:  # record how long the last (possibly partial) run took, for the dataset's meta
        info = {"seconds_last_run": round(seconds, 2), "rows_last_run": int(sum(e - s for _, s, e in todo))}
        atomic_write(out / "timing.json", lambda fh: fh.write(json.dumps(info).encode()), permissions=0o644)
    return pool

"""On-disk cache of computed features.

Location: ``$BAYESAL_CACHE`` if set, else ``~/.cache/bayesal``. One entry per (dataset, backbone,
content hash): ``<key>.npz`` holds the ``features (N, D)`` float32 array and ``<key>.json`` the
metadata (shape, sha256 of the .npz bytes, backbone config, featurisation time). Both files are
written to a temporary name and moved into place with ``os.replace``, the .json last, so a reader
never sees a half-written entry. A corrupt entry (unreadable, truncated, wrong shape, checksum
mismatch) triggers a ``warnings.warn`` naming the file and is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from bayesal.exceptions import BackboneError, DataFileError, InvalidInputError, StorageError
from bayesal.utils import atomic_write, check_writable_dir

__all__ = [
    "cache_dir",
    "content_hash",
    "cache_key",
    "FeatureCache",
    "cached_features",
    "CorruptCacheWarning",
]

CACHE_FORMAT = 1


class CorruptCacheWarning(UserWarning):
    """A cache entry could not be used and is being rebuilt."""


def cache_dir() -> Path:
    """The cache directory: ``$BAYESAL_CACHE`` or ``~/.cache/bayesal`` (not created here)."""
    env = os.environ.get("BAYESAL_CACHE")
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "bayesal"
    existing = path
    while not existing.exists() and existing != existing.parent:  # its first part that exists
        existing = existing.parent
    if existing.exists() and not existing.is_dir():  # mkdir below it would fail with a bare OSError
        where = f"$BAYESAL_CACHE={env}" if env else str(path)
        raise StorageError(f"the feature cache directory {where} cannot be used: {existing} is a file, not a "
                           "directory; point BAYESAL_CACHE at a folder (or unset it)")
    return path


def _update_with(h: hashlib._Hash, obj: Any) -> None:
    """Feed ``obj`` into ``h`` unambiguously (type tags and lengths before payloads)."""
    if isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        if arr.dtype == object:
            h.update(b"L%d;" % len(arr))
            for v in arr:
                _update_with(h, v)
            return
        h.update(f"A{arr.dtype.str}{arr.shape};".encode())
        h.update(arr.tobytes())
    elif isinstance(obj, str):
        b = obj.encode("utf-8", errors="surrogatepass")
        h.update(b"S%d;" % len(b))
        h.update(b)
    elif isinstance(obj, bytes):
        h.update(b"B%d;" % len(obj))
        h.update(obj)
    elif isinstance(obj, dict):
        b = json.dumps(obj, sort_keys=True, default=str).encode()
        h.update(b"D%d;" % len(b))
        h.update(b)
    elif isinstance(obj, (list, tuple)):
        h.update(b"L%d;" % len(obj))
        for v in obj:
            _update_with(h, v)
    elif hasattr(obj, "detach") and hasattr(obj, "cpu"):  # torch tensor
        _update_with(h, obj.detach().cpu().numpy())
    else:
        b = repr(obj).encode()
        h.update(b"R%d;" % len(b))
        h.update(b)


def content_hash(*parts: Any) -> str:
    """sha256 hex digest of raw inputs (arrays, strings, lists of them, config dicts)."""
    h = hashlib.sha256()
    h.update(b"bayesal-cache-v%d;" % CACHE_FORMAT)
    for p in parts:
        _update_with(h, p)
    return h.hexdigest()


def cache_key(dataset: str, backbone: str, digest: str) -> str:
    """File-name-safe key ``<dataset>__<backbone>__<digest[:20]>``."""

    def safe(s: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-") or "x"

    return f"{safe(dataset)}__{safe(backbone)}__{digest[:20]}"


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Atomic, fsync-ed write that creates the directory; the file gets the usual (umask) permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write, mode=mode, permissions=0o666 & ~_UMASK)  # mkstemp alone makes 0600


class FeatureCache:
    """A directory of ``<key>.npz`` feature arrays with ``<key>.json`` metadata."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else cache_dir()

    def paths(self, key: str) -> tuple[Path, Path]:
        return self.root / f"{key}.npz", self.root / f"{key}.json"

    def get(self, key: str, shape: tuple[int | None, int | None] | None = None) -> np.ndarray | None:
        """Cached ``features (N, D)`` for ``key``, or ``None`` when absent or corrupt (with a warning).

        ``shape`` gives the expected ``(N, D)``; ``None`` entries are not checked.
        """
        npz, meta_path = self.paths(key)
        if not npz.exists() and not meta_path.exists():
            return None
        try:
            if not meta_path.exists():
                raise DataFileError("metadata file is missing")
            if not npz.exists():
                raise DataFileError("feature file is missing")
            meta = json.loads(meta_path.read_text())
            if meta.get("format") != CACHE_FORMAT:
                raise DataFileError(f"cache format {meta.get('format')} != {CACHE_FORMAT}")
            digest = _sha256_file(npz)
            if digest != meta.get("sha256"):
                raise DataFileError("checksum mismatch (truncated or modified file)")
            with np.load(npz, allow_pickle=False) as z:
                feats = z["features"]
            if feats.ndim != 2 or list(feats.shape) != list(meta.get("shape", [])):
                raise DataFileError(f"shape {feats.shape} differs from the recorded {meta.get('shape')}")
            if shape is not None:
                for want, got, what in zip(shape, feats.shape, ("rows", "columns")):
                    if want is not None and want != got:
                        raise DataFileError(f"has {got} {what}, expected {want}")
            if feats.dtype != np.float32:
                raise DataFileError(f"dtype {feats.dtype}, expected float32")
            if not np.isfinite(feats).all():
                raise DataFileError("contains NaN or inf")
        except Exception as err:  # noqa: BLE001 - any failure means "rebuild"
            warnings.warn(
                f"bayesal feature cache entry {npz} is corrupt ({err}); recomputing it",
                CorruptCacheWarning,
                stacklevel=3,
            )
            self.remove(key)
            return None
        return feats

    def put(self, key: str, features: np.ndarray, info: dict[str, Any] | None = None) -> Path:
        """Store ``features (N, D)`` atomically; return the .npz path."""
        feats = np.ascontiguousarray(features, dtype=np.float32)
        if feats.ndim != 2:
            raise InvalidInputError(f"features must be 2-D (N, D), got shape {feats.shape}")
        npz, meta_path = self.paths(key)
        _atomic_write(npz, lambda f: np.savez(f, features=feats))
        meta = {
            "format": CACHE_FORMAT,
            "key": key,
            "shape": list(feats.shape),
            "dtype": "float32",
            "sha256": _sha256_file(npz),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **(info or {}),
        }
        _atomic_write(meta_path, lambda f: f.write(json.dumps(meta, indent=1, default=str)), mode="w")
        return npz

    def info(self, key: str) -> dict[str, Any] | None:
        """The metadata of an entry, or ``None``."""
        try:
            return json.loads(self.paths(key)[1].read_text())
        except (OSError, ValueError):
            return None

    def remove(self, key: str) -> None:
        for p in self.paths(key):
            try:
                p.unlink()
            except FileNotFoundError:
                pass

    def entries(self) -> list[str]:
        """Keys of the complete entries in the cache."""
        if not self.root.is_dir():
            return []
        return sorted(p.stem for p in self.root.glob("*.json") if (self.root / f"{p.stem}.npz").exists())


def cached_features(
    dataset: str,
    backbone: Any,
    items: Any,
    *,
    hash_parts: Iterable[Any] | None = None,
    batch_size: int = 64,
    progress: bool = True,
    use_cache: bool = True,
    cache: FeatureCache | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Features of ``items`` under ``backbone``, from the cache if present, else computed and stored.

    The key is ``dataset`` + ``backbone.name`` + sha256 of the raw inputs (``hash_parts``, default
    ``items``) and of ``backbone.config()``. Returns ``(features (N, D) float32, info)``; ``info``
    has ``cache`` = ``"hit"`` / ``"miss"`` / ``"off"``, ``key``, ``path`` and ``seconds`` (the
    featurisation time, recorded at the first run).
    """
    n = len(items)
    parts = list(hash_parts) if hash_parts is not None else [items]
    digest = content_hash(dataset, backbone.config(), *parts)
    key = cache_key(dataset, backbone.name, digest)
    store = cache or FeatureCache()
    if use_cache:
        t0 = time.perf_counter()
        feats = store.get(key, shape=(n, getattr(backbone, "dim", None)))
        if feats is not None:
            meta = store.info(key) or {}
            return feats, {
                "cache": "hit",
                "key": key,
                "path": str(store.paths(key)[0]),
                "seconds": meta.get("seconds"),
                "load_seconds": time.perf_counter() - t0,
            }
    if use_cache:  # before the (maybe long) featurisation: an unwritable cache must not cost it
        where = "feature cache" + (" ($BAYESAL_CACHE)" if cache is None and os.environ.get("BAYESAL_CACHE") else "")
        check_writable_dir(store.root, what=where)
    t0 = time.perf_counter()
    feats = np.ascontiguousarray(backbone.encode(items, batch_size=batch_size, progress=progress), dtype=np.float32)
    seconds = time.perf_counter() - t0
    if feats.shape[0] != n:
        raise BackboneError(f"backbone {backbone.name} returned {feats.shape[0]} rows for {n} items")
    info: dict[str, Any] = {"cache": "off", "key": key, "seconds": seconds}
    if use_cache:
        path = store.put(
            key,
            feats,
            {"dataset": dataset, "backbone": backbone.name, "backbone_config": backbone.config(),
             "content_sha256": digest, "seconds": round(seconds, 3)},
        )
        info.update(cache="miss", path=str(path))
    return feats, info

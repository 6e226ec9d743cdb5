"""PNG thumbnails of image items, made once and kept as files.

An image shown for labeling costs a file read, a decode, a resize and a PNG encoding; done per request
that is most of the time an image item takes. :class:`Thumbnails` makes each item's thumbnail once (at
featurisation for an image folder, :func:`~bayesal.data.items.embed_items`; otherwise on first use) and
keeps it as a file in a folder whose name carries a key of the content, so that a changed item set never
reads a stale thumbnail, and the files can be served as cached static files.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
import threading
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bayesal.exceptions import InvalidInputError

__all__ = ["THUMB_SIDE", "Thumbnails", "content_key", "png_bytes", "thumbnail_png", "to_uint8", "is_image"]

THUMB_SIDE = 168  # pixels of the longer side of a thumbnail (nearest-neighbour upscaling of small images)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(pixels: np.ndarray) -> bytes:
    """Encode ``(H, W)`` grayscale or ``(H, W, 3)`` RGB uint8 pixels as a PNG file (no imaging library)."""
    a = np.ascontiguousarray(pixels, dtype=np.uint8)
    if a.ndim == 2:
        color_type = 0
    elif a.ndim == 3 and a.shape[2] == 3:
        color_type = 2
    else:
        raise InvalidInputError(f"png_bytes needs (H, W) or (H, W, 3) pixels, got shape {a.shape}")
    h, w = a.shape[:2]
    rows = a.reshape(h, -1)
    raw = np.concatenate([np.zeros((h, 1), dtype=np.uint8), rows], axis=1).tobytes()  # filter byte 0 per row
    header = struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b"")


def is_image(item: Any) -> bool:
    """True for a numeric ``(H, W)``, ``(H, W, 1|3|4)`` or ``(1|3, H, W)`` array with both sides ≥ 2."""
    if not isinstance(item, np.ndarray) or not np.issubdtype(item.dtype, np.number):
        return False
    if item.ndim == 2:
        return min(item.shape) >= 2
    if item.ndim == 3:
        return (item.shape[2] in (1, 3, 4) and min(item.shape[:2]) >= 2) or (
            item.shape[0] in (1, 3) and min(item.shape[1:]) >= 2
        )
    return False


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Channels last, 1 or 3 channels, scaled to 0..255 (uint8 kept as is, other ranges min-max scaled)."""
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[2] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)
    if a.ndim == 3:
        a = a[..., 0] if a.shape[2] == 1 else a[..., :3]
    if a.dtype == np.uint8:
        return a
    a = a.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, dtype=np.uint8)
    lo, hi = float(a[finite].min()), float(a[finite].max())
    scaled = np.zeros_like(a) if hi <= lo else (np.where(finite, a, lo) - lo) / (hi - lo)
    return (scaled * 255).round().astype(np.uint8)


def thumbnail_png(img: np.ndarray, side: int = THUMB_SIDE) -> bytes:
    """PNG of ``img`` upscaled by an integer factor to about ``side`` pixels (larger images as they are)."""
    a = to_uint8(img)
    factor = max(1, side // max(a.shape[:2]))
    if factor > 1:
        a = np.repeat(np.repeat(a, factor, axis=0), factor, axis=1)
    return png_bytes(a)


class Thumbnails:
    """PNG thumbnails of ``images``, one file per item in ``folder``, made on first use and kept.

    Writes are atomic (a temporary file renamed), so readers in other threads or processes see a whole
    file or none; a thumbnail made twice concurrently is the same bytes.

    Parameters
    ----------
    images : sequence
        The items, read on access (e.g. :class:`~bayesal.data.items.ImageFiles` or an ``(N, H, W[, 3])``
        array); an item is read only when its thumbnail is made.
    folder : path, optional
        Where the files go (created when needed); ``None`` keeps the thumbnails in memory.
    key : str
        Names the content (e.g. a hash of the items): the folder ``folder / key`` holds the files, and
        servers put it in the URL, so a cached thumbnail of another content is never shown.
    names : callable, optional
        The file name stem of item ``i`` (default: ``str(i)``); lets several subsets of one item set
        share thumbnails (an image folder names them by file).
    """

    def __init__(self, images: Sequence[Any] | np.ndarray, folder: str | os.PathLike[str] | None, key: str,
                 names: Callable[[int], str] | None = None) -> None:
        if not key or any(ch not in "0123456789abcdefghijklmnopqrstuvwxyz-_" for ch in key):
            raise InvalidInputError(f"a thumbnail key must be lower-case letters, digits, '-' or '_', got {key!r}")
        self.images = images
        self.key = key
        self.folder = None if folder is None else Path(folder) / key
        self._names = names
        self._memory: dict[int, bytes] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.images)

    def file(self, index: int) -> Path | None:
        """The file of item ``index``'s thumbnail (None for in-memory thumbnails); it may not exist yet."""
        if self.folder is None:
            return None
        stem = str(int(index)) if self._names is None else self._names(int(index))
        return self.folder / f"{stem}.png"

    def png(self, index: int) -> bytes:
        """The thumbnail of item ``index`` as PNG bytes: read from its file, made (and saved) if missing."""
        i = int(index)
        if not 0 <= i < len(self.images):
            raise InvalidInputError(f"item index {index!r} is not in the pool [0, {len(self.images)})")
        path = self.file(i)
        if path is None:
            with self._lock:
                found = self._memory.get(i)
            if found is None:
                found = thumbnail_png(np.asarray(self.images[i]))
                with self._lock:
                    if len(self._memory) > 4096:  # bounded: an in-memory pool is small or short-lived
                        self._memory.clear()
                    self._memory[i] = found
            return found
        try:
            return path.read_bytes()
        except FileNotFoundError:
            data = thumbnail_png(np.asarray(self.images[i]))
            self._write(path, data)
            return data

    def ensure(self, index: int) -> None:
        """Make item ``index``'s thumbnail if it is missing (e.g. ahead of showing it)."""
        path = self.file(index)
        if path is None or not path.exists():
            self.png(index)

    def make_all(self, progress: bool = False) -> int:
        """Make every missing thumbnail; returns how many were made."""
        made = 0
        for i in range(len(self.images)):
            path = self.file(i)
            if path is not None and path.exists():
                continue
            self.png(i)
            made += 1
            if progress and made % 500 == 0:
                print(f"  thumbnails: {made} made", flush=True)
        return made

    @staticmethod
    def _write(path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".png")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def content_key(*parts: bytes | str | memoryview) -> str:
    """A short hex key of ``parts`` (for :class:`Thumbnails`; a contiguous array's ``.data`` is hashed
    without a copy)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:16]

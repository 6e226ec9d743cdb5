"""Atomic file replacement, shared by the session state (:mod:`.persistence`) and the data files
(:mod:`.data.cache`, :meth:`.data.base.Dataset.save`)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["fsync_dir", "atomic_write", "atomic_write_bytes"]


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory so that a rename or a new file inside it is durable (no-op where unsupported)."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(
    path: str | os.PathLike[str],
    write: Callable[[IO[Any]], Any],
    *,
    mode: str = "wb",
    fsync: bool = True,
    permissions: int | None = None,
) -> None:
    """Replace ``path`` by what ``write(file)`` writes, atomically: temp file in the same directory,
    flush, fsync (unless ``fsync=False``), ``os.replace``; the temp file is removed on any failure.

    ``permissions``: mode bits of the new file (``mkstemp``'s ``0600`` when ``None``). The directory
    itself is not fsync-ed (see :func:`atomic_write_bytes`).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if permissions is not None:
            os.chmod(tmp, permissions)
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = True) -> None:
    """Replace ``path`` by ``data`` atomically (:func:`atomic_write`), then fsync the directory so the
    rename is durable. With ``fsync=False`` only the atomic rename is kept."""
    path = Path(path)
    atomic_write(path, lambda fh: fh.write(data), fsync=fsync)
    if fsync:
        fsync_dir(path.parent)

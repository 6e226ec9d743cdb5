"""Atomic file replacement, shared by the session state (:mod:`.persistence`) and the data files
(:mod:`.data.cache`, :meth:`.data.base.Dataset.save`)."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, cast

from bayesal.exceptions import StorageError

from .locations import storage_error

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
    itself is not fsync-ed (see :func:`atomic_write_bytes`). A failing file system (disk full,
    read-only, a file where the directory should be) raises :class:`~bayesal.exceptions.StorageError`
    and leaves ``path`` as it was.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise storage_error("write", path, err) from err
    try:
        if permissions is not None:
            os.chmod(tmp, permissions)
        with _FdFile(fd, text="b" not in mode) as fh:
            write(cast("IO[Any]", fh))  # a file object: write, tell, fileno
            if fsync:
                os.fsync(fd)
        os.replace(tmp, path)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(err, OSError) and not isinstance(err, StorageError):
            raise storage_error("write", path, err) from err
        raise


class _FdFile(io.RawIOBase):
    """A write-only, unbuffered file on ``fd`` whose every write is an ``os.write`` (text is UTF-8):
    errors surface at the write that hit them, and one patched ``os.write`` can simulate a full disk
    for every writer (tests). Not seekable; ``tell`` counts the bytes written (enough for ``zipfile``)."""

    def __init__(self, fd: int, text: bool = False) -> None:
        super().__init__()
        self._fd, self._text, self._pos = fd, text, 0

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._fd

    def tell(self) -> int:
        return self._pos

    def write(self, data: Any) -> int:
        view = memoryview(data.encode() if isinstance(data, str) else data).cast("B")
        done = 0
        while done < len(view):
            done += os.write(self._fd, view[done:])
        self._pos += done
        return len(data) if isinstance(data, str) else done

    def close(self) -> None:
        if not self.closed:
            super().close()
            os.close(self._fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = True) -> None:
    """Replace ``path`` by ``data`` atomically (:func:`atomic_write`), then fsync the directory so the
    rename is durable. With ``fsync=False`` only the atomic rename is kept."""
    path = Path(path)
    atomic_write(path, lambda fh: fh.write(data), fsync=fsync)
    if fsync:
        fsync_dir(path.parent)

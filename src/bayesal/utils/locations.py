"""Where files may go: output locations checked before any compute, names from files confined to a
directory, and ``OSError`` turned into one sentence a user can act on."""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path

from bayesal.exceptions import StorageError

__all__ = [
    "describe_os_error",
    "storage_error",
    "check_writable_dir",
    "check_output_file",
    "require_regular_file",
    "safe_name",
    "confined",
]

_HINTS = {
    errno.ENOSPC: "the disk is full; free some space and run the command again",
    errno.EDQUOT: "the disk quota is exhausted; free some space and run the command again",
    errno.EROFS: "the file system is read-only; choose a writable location",
    errno.EACCES: "permission denied; choose a location you can write to",
    errno.EPERM: "operation not permitted; choose a location you can write to",
    errno.ENOTDIR: "a part of the path is a file, not a directory; choose another path",
    errno.EISDIR: "it is a directory, not a file; choose a file name",
    errno.EEXIST: "a file is in the way; choose another path",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter path",
    errno.EIO: "the device reported an I/O error; check the disk",
}


def describe_os_error(err: OSError) -> str:
    """The reason of ``err`` in words plus what to do, e.g. ``"the disk is full; free some space ..."``."""
    hint = _HINTS.get(err.errno or -1)
    if hint:
        return hint
    return (err.strerror or str(err) or type(err).__name__).rstrip(".").lower()


def storage_error(what: str, path: str | os.PathLike[str], err: OSError) -> StorageError:
    """A :class:`StorageError` ``"could not <what> <path>: <reason; what to do>"`` keeping ``errno``."""
    return _error(err.errno, f"could not {what} {os.fspath(path)}: {describe_os_error(err)}")


def _error(code: int | None, message: str) -> StorageError:
    """A StorageError whose ``str`` is just ``message`` (``OSError(errno, msg)`` would prefix ``[Errno N]``)
    and whose ``errno`` is still set for callers that branch on it."""
    out = StorageError(message)
    out.errno = code
    return out


def _first_existing(path: Path) -> Path:
    p = path
    while not p.exists() and not p.is_symlink() and p != p.parent:
        p = p.parent
    return p


def check_writable_dir(path: str | os.PathLike[str], *, what: str = "directory", create: bool = True) -> Path:
    """Make sure ``path`` is (or can become) a directory we can create files in; returns it.

    Raises :class:`StorageError` when a part of the path is a regular file, the location is read-only
    or not ours, checked by creating and removing a probe file (``os.access`` is no help for root or on
    read-only mounts). With ``create=False`` a missing directory is only checked, not created.
    """
    path = Path(path).expanduser()
    existing = _first_existing(path)
    if existing.exists() and not existing.is_dir():
        raise _error(
            errno.ENOTDIR,
            f"cannot use {path} as the {what}: {existing} is a file, not a directory; choose another location",
        )
    target = path
    if not path.exists():
        if not create:  # probe the nearest existing ancestor: could the directory be made there?
            target = existing
        else:
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise storage_error(f"create the {what}", path, err) from err
    probe = target / f".bayesal-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise storage_error(f"write to the {what}", path, err) from err
    return path


def check_output_file(path: str | os.PathLike[str], *, what: str = "output file") -> Path:
    """Check before any compute that ``path`` can be written: its directory is writable (created if
    needed) and ``path`` itself is absent or a regular, writable file."""
    path = Path(path).expanduser()
    if path.exists() or path.is_symlink():
        require_regular_file(path, what=what)
    check_writable_dir(path.parent, what=f"directory of the {what}")
    if path.exists():
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND)
            os.close(fd)
        except OSError as err:
            raise storage_error(f"open the {what}", path, err) from err
    return path


def require_regular_file(path: str | os.PathLike[str], *, what: str = "file") -> Path:
    """Raise :class:`StorageError` unless ``path`` is a regular file (a FIFO, device or directory in
    its place would block a reader or be misread); a missing file raises ``FileNotFoundError``."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise
    except OSError as err:
        raise storage_error(f"read the {what}", path, err) from err
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        raise _error(errno.EINVAL, f"the {what} {path} is {kind}; replace it by a regular file or choose another path")
    return path


def safe_name(name: str, *, default: str = "data", max_len: int = 80) -> str:
    """``name`` as one harmless path component: letters, digits, ``_ . -`` only, no leading dot."""
    s = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(name)).strip("-.")[:max_len].strip("-.")
    return s or default


def confined(path: str | os.PathLike[str], root: str | os.PathLike[str], *, what: str = "path") -> Path:
    """``path`` (relative to ``root`` if relative) if it resolves inside ``root``; else :class:`StorageError`."""
    root_r = Path(root).resolve()
    p = Path(path)
    full = (p if p.is_absolute() else root_r / p).resolve()
    if full != root_r and root_r not in full.parents:
        raise _error(errno.EPERM, f"the {what} {path} would lie outside {root_r}; choose a path inside it")
    return full

"""File formats of a labeling session directory: the atomic snapshot and the append-only label log.

Two files live in a session's ``state_dir``:

* a **snapshot** (:func:`save_snapshot` / :func:`load_snapshot`): one file holding everything needed to
  resume quickly (posterior tensors included). It is replaced atomically — written to a temporary file
  in the same directory, flushed, ``os.fsync``-ed, moved over the old file with ``os.replace`` and the
  directory fsync-ed — so a reader sees either the old or the new snapshot, never a mixture. The
  payload is prefixed by a magic line and its SHA-256, so a damaged file is reported as such.
* a **label log** (:class:`LabelLog`): JSON lines, one per event, each ``"<crc32 hex> <json>\\n"``. A line
  is written with one ``os.write`` and fsync-ed before the call that produced it returns, so every
  acknowledged event is on disk. Bytes after the last newline are a torn write (a crash mid-write
  can only cut a line's end) and are ignored; :meth:`LabelLog.open` truncates them away before new
  lines are appended. A complete line with a bad checksum is damage (disk or manual editing), never a
  crash, and is reported.

This module knows bytes and lines only; which events the lines hold and what a session does with them
live in :mod:`bayesal.labeling.store` and :mod:`bayesal.labeling.recovery`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zlib
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bayesal.exceptions import CorruptStateError, InvalidInputError, SessionLockedError, StorageError
from bayesal.utils import atomic_write_bytes, fsync_dir, require_regular_file, storage_error

try:  # POSIX advisory lock: one writer per log
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "FORMAT_VERSION",
    "LOG_NAME",
    "STATE_NAME",
    "fsync_dir",
    "atomic_write_bytes",
    "save_snapshot",
    "load_snapshot",
    "encode_record",
    "decode_record",
    "LogReadResult",
    "read_log",
    "LabelLog",
    "CorruptStateError",
    "DirectoryLock",
]

SNAPSHOT_MAGIC = b"BAYESAL-SNAPSHOT v1\n"
#: Bounds on what is read back: one log line, one snapshot.
MAX_LINE_BYTES = 16 << 20
MAX_SNAPSHOT_BYTES = 16 << 30
#: Version of the header and snapshot layout (sessions of this version resume).
FORMAT_VERSION = 1
#: The label log: the source of truth (header line, then one line per event).
LOG_NAME = "labels.jsonl"
#: The snapshot: a cache of the events plus the posterior, for fast resume.
STATE_NAME = "session.state"


def save_snapshot(path: str | os.PathLike[str], state: dict[str, Any], *, fsync: bool = True) -> None:
    """Serialize ``state`` (dicts/lists of primitives and tensors) with a checksum, atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode()
    atomic_write_bytes(path, SNAPSHOT_MAGIC + digest + b"\n" + payload, fsync=fsync)


def load_snapshot(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a snapshot written by :func:`save_snapshot`.

    Raises ``FileNotFoundError`` if it does not exist and :class:`CorruptStateError` (a ``ValueError``)
    naming the problem if the magic line, the checksum or the payload is bad.
    """
    path = Path(path)
    require_regular_file(path, what="state file")  # a FIFO in its place must not block the reader
    if path.stat().st_size > MAX_SNAPSHOT_BYTES:
        raise CorruptStateError(f"state file {path} is corrupt: {path.stat().st_size} bytes, over the "
                                f"{MAX_SNAPSHOT_BYTES} a snapshot can have")
    raw = path.read_bytes()
    if not raw.startswith(SNAPSHOT_MAGIC):
        raise CorruptStateError(f"state file {path} is corrupt: it does not start with the bayesal snapshot header")
    rest = raw[len(SNAPSHOT_MAGIC) :]
    digest, sep, payload = rest.partition(b"\n")
    if not sep or len(digest) != 64:
        raise CorruptStateError(f"state file {path} is corrupt: truncated header")
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise CorruptStateError(f"state file {path} is corrupt: checksum mismatch (file damaged or truncated)")
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CorruptStateError(f"state file {path} is corrupt: cannot be unpickled ({err})") from err
    if not isinstance(state, dict):
        raise CorruptStateError(f"state file {path} is corrupt: payload is not a dict")
    return state


# ----------------------------------------------------------------------------------- label log
def encode_record(record: dict[str, Any]) -> bytes:
    """One log line ``b"<crc32 of json, 8 hex> <compact json>\\n"``."""
    body = json.dumps(record, separators=(",", ":"), sort_keys=True, allow_nan=False)
    if "\n" in body:
        raise InvalidInputError("a label log record must not contain a newline; it would split into two lines")
    data = body.encode()
    return b"%08x %s\n" % (zlib.crc32(data) & 0xFFFFFFFF, data)


def decode_record(line: bytes) -> dict[str, Any] | None:
    """The record of one complete line (without or with its newline), or None if the checksum fails."""
    line = line.rstrip(b"\n")
    crc, sep, data = line.partition(b" ")
    if not sep or len(crc) != 8 or len(data) > MAX_LINE_BYTES:
        return None
    try:
        if int(crc, 16) != zlib.crc32(data) & 0xFFFFFFFF:
            return None
        record = json.loads(data)
    except (ValueError, RecursionError):  # RecursionError: nested thousands deep, never ours
        return None
    return record if isinstance(record, dict) else None


@dataclass
class LogReadResult:
    """``records``: the valid prefix of the log; ``valid_bytes``: its length in bytes;
    ``torn_tail``: True if bytes after the valid prefix were ignored (a torn or garbled last line);
    ``bad_lines``: the 1-based number of the first complete line that fails its checksum (damage, not a
    torn write); ``n_lines``: complete lines in the file, read or not."""

    records: list[dict[str, Any]]
    valid_bytes: int
    torn_tail: bool = False
    bad_lines: list[int] = field(default_factory=list)
    n_lines: int = 0


def read_log(path: str | os.PathLike[str]) -> LogReadResult:
    """Read a label log. Bytes after the last newline are a torn write (a line is written with one
    ``os.write`` ending in its newline, so a crash can only cut off the end) and are ignored; a
    complete line that fails its checksum is damage, reported in ``bad_lines`` (reading stops there)."""
    require_regular_file(path, what="label log")  # a FIFO in its place must not block the reader
    raw = Path(path).read_bytes()
    records: list[dict[str, Any]] = []
    pos = 0
    lines = raw.split(b"\n")
    complete, tail = lines[:-1], lines[-1]
    for k, line in enumerate(complete):
        rec = decode_record(line)
        if rec is None:
            return LogReadResult(records, pos, torn_tail=False, bad_lines=[k + 1], n_lines=len(complete))
        records.append(rec)
        pos += len(line) + 1
    return LogReadResult(records, pos, torn_tail=bool(tail), n_lines=len(complete))


def _lock_fd(fd: int, path: Path, what: str = "label log") -> None:
    """Take an exclusive non-blocking ``flock`` on ``fd``; on failure close it and raise."""
    if fcntl is None:  # pragma: no cover
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        os.close(fd)
        raise SessionLockedError(
            f"{what} {path} is open for writing elsewhere (another process or an unclosed Session); close it first"
        ) from err


class _OwnsFd:
    """Holds one file descriptor ``_fd``, closed by :meth:`close` (or at garbage collection)."""

    _fd: int | None = None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


class DirectoryLock(_OwnsFd):
    """Exclusive ``flock`` on a session directory, held from before a session reads or plans anything
    until it is closed: two processes (or two Session objects) never create, resume or recover the
    same directory at once, so no one acts on a picture of the files that has gone stale."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        _lock_fd(fd, self.path, what="the session in")
        self._fd = fd

    def release(self) -> None:
        self.close()


class LabelLog(_OwnsFd):
    """Append-only, fsync-ed JSON-lines log (see the module docstring for the line format).

    An open log holds an exclusive ``flock`` so that two writers never interleave lines.
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.path = Path(path)
        self.fsync = fsync
        self._fd: int | None = None
        # False after a failed append that may have left part of its line behind (see :meth:`append`)
        self.intact = True

    @classmethod
    def create(cls, path: str | os.PathLike[str], header: dict[str, Any], *, fsync: bool = True) -> LabelLog:
        """Create a new log whose first line is ``header``; fails if the file exists."""
        log = cls(path, fsync=fsync)
        try:
            fd = os.open(log.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        except FileExistsError:  # the caller decides whether a log in place may be replaced
            raise
        except OSError as err:
            raise storage_error("create the label log", log.path, err) from err
        _lock_fd(fd, log.path)
        log._fd = fd
        try:
            log.append(header)
            if fsync:
                fsync_dir(log.path.parent)
        except BaseException:
            log.close()  # releases the log's lock: a retry in this process must not find it held
            raise
        return log

    @classmethod
    def open(cls, path: str | os.PathLike[str], valid_bytes: int, *, fsync: bool = True) -> LabelLog:
        """Lock an existing log and open it for appending after truncating it to its ``valid_bytes``
        prefix (drops a torn last line so the next record starts on a fresh line)."""
        log = cls(path, fsync=fsync)
        try:
            fd = os.open(log.path, os.O_WRONLY | os.O_APPEND)
        except OSError as err:
            raise storage_error("open the label log", log.path, err) from err
        _lock_fd(fd, log.path)
        log._fd = fd
        if os.fstat(fd).st_size != valid_bytes:
            try:
                os.ftruncate(fd, valid_bytes)
                os.fsync(fd)
            except OSError as err:
                log.close()
                raise storage_error("cut the torn last line of the label log", log.path, err) from err
        return log

    @classmethod
    def rewrite(cls, path: str | os.PathLike[str], records: list[dict[str, Any]], *, fsync: bool = True) -> LabelLog:
        """Atomically replace the log by ``records`` and open it for appending (holding the old
        file's lock meanwhile)."""
        path = Path(path)
        old = os.open(path, os.O_RDONLY)
        _lock_fd(old, path)
        try:
            data = b"".join(encode_record(r) for r in records)
            atomic_write_bytes(path, data, fsync=True)
            return cls.open(path, len(data), fsync=fsync)
        finally:
            with suppress(OSError):
                os.close(old)

    def append(self, record: dict[str, Any]) -> None:
        """Write one line with a single ``os.write`` and fsync it (unless ``fsync=False``)."""
        if self._fd is None:
            raise StorageError(f"the label log {self.path} is closed; reopen the session to write to it")
        data = encode_record(record)
        size = os.fstat(self._fd).st_size
        stage = "write"
        try:
            written = os.write(self._fd, data)
            while written < len(data):  # a short write: the disk filled up mid-line
                written += os.write(self._fd, data[written:])
            if self.fsync:
                stage = "fsync"
                os.fsync(self._fd)
        except OSError as err:
            # leave the log as it was before this line (no half line for the next append to follow)
            self.intact = False
            with suppress(OSError):
                os.ftruncate(self._fd, size)
                # after a failed fsync the file's state on disk is unknown: only a failed write whose
                # partial line is confirmed gone leaves a log the next append may follow
                self.intact = stage == "write" and os.fstat(self._fd).st_size == size
            raise storage_error("append to the label log", self.path, err) from err


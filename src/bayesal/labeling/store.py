"""The state directory of an open labeling session: lock, label log and snapshots.

A :class:`SessionStore` owns one directory while a session is open. It creates a new one
(:meth:`SessionStore.create`) or locks an existing one and plans how to reopen it
(:meth:`SessionStore.lock`, :meth:`SessionStore.plan`, :meth:`SessionStore.open_log`), appends every event
durably before the caller hears back (:meth:`SessionStore.append`), and writes snapshots every
``snapshot_every`` events, in a background thread by default (:class:`SnapshotWriter`). It never
interprets events or posteriors: a snapshot is a dict handed over by the session. The same store, with
other file names (:class:`LogFiles`), keeps the directory of a Label Studio project
(:meth:`SessionStore.open`, :meth:`SessionStore.read_log`, :meth:`SessionStore.create_log`,
:meth:`SessionStore.open_log_at`); :class:`~bayesal.labeling.engine.LabelingEngine` drives it.

:class:`StorageOptions` holds the five options of that machinery, written once here and taken by
:class:`~bayesal.labeling.session.Session`, :meth:`~bayesal.labeling.session.Session.resume` and
:meth:`~bayesal.labeling.session.Session.recover` alike.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bayesal.exceptions import InvalidInputError, SessionExistsError, SessionNotFoundError, StorageError
from bayesal.utils import check_writable_dir

from .recovery import RecoveryPlan, carry_out, plan_recovery, plan_resume
from .storage import (
    LOG_NAME,
    STATE_NAME,
    DirectoryLock,
    LabelLog,
    LogReadResult,
    load_snapshot,
    read_log,
    save_snapshot,
)

__all__ = ["StorageOptions", "LogFiles", "SESSION_FILES", "SessionStore", "SnapshotWriter", "SnapshotWarning"]


class SnapshotWarning(UserWarning):
    """An action was recorded durably in the label log, but the snapshot after it could not be written."""


@dataclass(frozen=True)
class LogFiles:
    """The files of a labeling directory: the event ``log`` and the ``snapshot`` (names inside it).

    ``halt_on_write_error``: refuse every append after a failed one until the directory is reopened
    (a session's rule; see :meth:`SessionStore.append`)."""

    log: str = LOG_NAME
    snapshot: str = STATE_NAME
    halt_on_write_error: bool = True


#: A labeling session's directory: ``labels.jsonl`` and ``session.state``.
SESSION_FILES = LogFiles()


@dataclass(frozen=True)
class StorageOptions:
    """How a session keeps its state.

    Parameters
    ----------
    fsync : bool
        fsync log lines and snapshots (turn off only for benchmarks and tests).
    snapshot_every : int
        Write the snapshot after this many events (the log alone always suffices to recover).
    async_snapshot : bool
        Write snapshots in a background thread, so that an action waits only for its log line.
    snapshot_interval : float
        Minimum seconds between two background snapshots (the latest state is written once it has
        passed; a flush writes at once). Labels given by a person are seconds apart, so each gets its
        snapshot; scripted bursts coalesce.
    undo_cache : int
        How many previous posteriors are kept in memory for an instant undo (older ones are replayed).
    """

    fsync: bool = True
    snapshot_every: int = 1
    async_snapshot: bool = True
    snapshot_interval: float = 0.2
    undo_cache: int = 32

    def __post_init__(self) -> None:
        if not isinstance(self.snapshot_interval, (int, float)) or not self.snapshot_interval >= 0:
            raise InvalidInputError(f"snapshot_interval must be >= 0 seconds, got {self.snapshot_interval!r}")
        if isinstance(self.snapshot_every, bool) or not isinstance(self.snapshot_every, int) or self.snapshot_every < 1:
            raise InvalidInputError(f"snapshot_every must be a positive integer, got {self.snapshot_every!r}")
        if isinstance(self.undo_cache, bool) or not isinstance(self.undo_cache, int) or self.undo_cache < 0:
            raise InvalidInputError(f"undo_cache must be an integer >= 0, got {self.undo_cache!r}")

    @classmethod
    def build(cls, storage: StorageOptions | None = None, overrides: Mapping[str, Any] | None = None) -> StorageOptions:
        """``storage`` (the defaults if ``None``) with the fields named in ``overrides`` replaced.

        Raises :class:`~bayesal.exceptions.InvalidInputError` for a name that is not a field.
        """
        base = storage if storage is not None else cls()
        if not isinstance(base, cls):
            raise InvalidInputError(f"storage must be a StorageOptions, got {type(base).__name__}")
        overrides = dict(overrides or {})
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise InvalidInputError(f"unknown storage option(s) {unknown}; the options are {sorted(fields)}")
        return dataclasses.replace(base, **overrides) if overrides else base


class SessionStore:
    """One locked session directory: its label log and its snapshots.

    Build it with :meth:`create` (a new session) or :meth:`lock` (an existing one). The directory lock
    is held from before anything is read until :meth:`close`, so two openers never act on the same
    files at once.
    """

    def __init__(self, path: Path, lock: DirectoryLock, options: StorageOptions,
                 files: LogFiles = SESSION_FILES) -> None:
        self.path = path
        self.options = options
        self.files = files
        self._lock: DirectoryLock | None = lock
        self._log: LabelLog | None = None
        self._writer: SnapshotWriter | None = None
        self._log_error: OSError | None = None
        self.snapshot_failures = 0  # snapshots that could not be written after a logged event
        self._since_snapshot = 0

    # ------------------------------------------------------------------ opening
    @classmethod
    def create(cls, path: Path, header: dict[str, Any], options: StorageOptions) -> SessionStore:
        """Create ``path`` (if needed), lock it and write a new label log whose first line is ``header``.

        Raises :class:`~bayesal.exceptions.SessionExistsError` if ``path`` already holds a session. A
        log without one complete line (a creation that died before its header was written, so nothing
        was acknowledged) is replaced; anything more, even a damaged log, is kept and refused.
        """
        check_writable_dir(path, what="session directory")  # a file in the way, read-only: one clear error
        cls._refuse_if_occupied(path)
        store = cls(path, DirectoryLock(path), options)
        try:
            cls._refuse_if_occupied(path)  # again under the lock
            log_path = path / LOG_NAME
            if log_path.exists():
                log_path.unlink()
            store._log = LabelLog.create(log_path, header, fsync=options.fsync)
        except BaseException:
            store.close()
            raise
        return store

    @staticmethod
    def _refuse_if_occupied(path: Path) -> None:
        log_path = path / LOG_NAME
        if (path / STATE_NAME).exists() or (log_path.exists() and b"\n" in log_path.read_bytes()):
            raise SessionExistsError(
                f"{path} already holds a labeling session; resume it (Session.resume({str(path)!r}, features), "
                f"or bayesal label --resume {path}) or choose an empty directory"
            )

    @classmethod
    def lock(cls, path: Path, options: StorageOptions) -> SessionStore:
        """Lock the existing session directory ``path``; its log is opened later by :meth:`open_log`.

        Raises :class:`~bayesal.exceptions.SessionNotFoundError` if ``path`` is not a directory and
        :class:`~bayesal.exceptions.SessionLockedError` if another opener holds it.
        """
        if not path.is_dir():
            raise SessionNotFoundError(f"no label log {path / LOG_NAME}; is {path} a session directory?")
        return cls(path, DirectoryLock(path), options)

    def plan(self, *, recover: bool, drop_damaged: bool = False) -> RecoveryPlan:
        """How to reopen the directory: :func:`~bayesal.labeling.recovery.plan_resume` (strict) or, with
        ``recover=True``, :func:`~bayesal.labeling.recovery.plan_recovery`. Touches no file."""
        return plan_recovery(self.path, drop_damaged=drop_damaged) if recover else plan_resume(self.path)

    def open_log(self, plan: RecoveryPlan) -> None:
        """Apply ``plan``'s file moves and open the label log for appending."""
        self._log = carry_out(plan, self.path, fsync=self.options.fsync)

    # ------------------------------------------------------------------ a directory of other files
    @classmethod
    def open(cls, path: Path, options: StorageOptions, files: LogFiles) -> SessionStore:
        """Create ``path`` if needed and lock it; then :meth:`read_log` and :meth:`create_log` or
        :meth:`open_log_at`. Raises :class:`~bayesal.exceptions.SessionLockedError` if another opener
        holds it."""
        path.mkdir(parents=True, exist_ok=True)
        return cls(path, DirectoryLock(path), options, files)

    @property
    def log_path(self) -> Path:
        """The event log's path."""
        return self.path / self.files.log

    @property
    def snapshot_path(self) -> Path:
        """The snapshot's path."""
        return self.path / self.files.snapshot

    def read_log(self) -> LogReadResult:
        """The event log as it is on disk (:func:`~bayesal.labeling.storage.read_log`)."""
        return read_log(self.log_path)

    def create_log(self, header: dict[str, Any]) -> None:
        """Write a new event log whose first line is ``header`` and keep it open for appending."""
        self._log = LabelLog.create(self.log_path, header, fsync=self.options.fsync)

    def open_log_at(self, valid_bytes: int) -> None:
        """Open the event log for appending after its intact ``valid_bytes`` (a torn last line is cut)."""
        self._log = LabelLog.open(self.log_path, valid_bytes, fsync=self.options.fsync)

    def load_snapshot(self) -> dict[str, Any]:
        """The snapshot; ``FileNotFoundError`` or :class:`~bayesal.exceptions.CorruptStateError` as for
        :func:`~bayesal.labeling.storage.load_snapshot`."""
        return load_snapshot(self.snapshot_path)

    # ------------------------------------------------------------------ writing
    @property
    def is_open(self) -> bool:
        """True while the label log is open for appending."""
        return self._log is not None

    def check_writable(self) -> None:
        """Raise :class:`~bayesal.exceptions.StorageError` if events can no longer be recorded."""
        if self._log_error is not None:
            raise StorageError(
                f"the label log {self.log_path} could not be written ({self._log_error!r}); nothing was "
                "recorded since. Fix the disk problem and reopen the session with Session.resume() or Session.recover()"
            )
        if self._log is None:
            raise StorageError(f"the session in {self.path} is closed; reopen it with Session.resume() to record more")

    def append(self, event: dict[str, Any]) -> None:
        """Write ``event`` to the label log, durably, before returning.

        After a failed write whose partial line was cut off again (a full disk), the next append is
        tried as usual: once space is free, recording goes on. When the line may be partly on disk
        (cutting it off failed, or the fsync failed) every later append is refused, so the log stays a
        valid prefix of what was acknowledged. With
        ``files.halt_on_write_error`` off (a Label Studio project) the error is raised as it is and the
        next append is tried.
        """
        self.check_writable()
        if self._log is None:  # narrowed by check_writable
            return
        try:
            self._log.append(event)
        except OSError as err:
            if not self.files.halt_on_write_error:
                raise
            what = (str(err) if isinstance(err, StorageError)
                    else f"could not write to the label log {self.log_path} ({err})")
            if isinstance(err, StorageError) and self._log.intact:  # the log is as it was: go on later
                raise StorageError(f"{what}; the last action was not recorded (give it again once the "
                                   "problem is fixed)") from err
            self._log_error = err
            raise StorageError(f"{what}; the last action was not recorded") from err

    def committed(self, state: Callable[[], dict[str, Any] | None]) -> None:
        """Count one committed event and write the snapshot ``state()`` if ``snapshot_every`` are due
        (``None``: nothing to write yet).

        The event is in the label log already, so a snapshot that cannot be written (a full disk) does
        not undo it: a :class:`SnapshotWarning` says so, ``snapshot_failures`` counts it, and the
        snapshot is tried again after the next event (resume rebuilds it from the log meanwhile)."""
        self._since_snapshot += 1
        if self._since_snapshot >= self.options.snapshot_every:
            snap = state()
            if snap is not None:
                try:
                    self.snapshot(snap, sync=not self.options.async_snapshot)
                except OSError as err:
                    self._since_snapshot = self.options.snapshot_every  # due again at the next event
                    self.snapshot_failures += 1
                    warnings.warn(
                        f"the action was recorded in the label log {self.log_path}, but the snapshot could not be "
                        f"written ({err}); nothing is lost (the log holds every event, and the snapshot is tried "
                        "again after the next action)", SnapshotWarning, stacklevel=5,
                    )

    @property
    def snapshot_due(self) -> bool:
        """True if ``snapshot_every`` events were committed since the last snapshot (one was skipped
        because the state had nothing to write then)."""
        return self._since_snapshot >= self.options.snapshot_every

    def snapshot(self, state: dict[str, Any], *, sync: bool) -> None:
        """Replace the snapshot by ``state``: now (``sync``), or via the background writer."""
        self._since_snapshot = 0
        if sync:
            try:
                self.drain()
            except StorageError:
                pass  # an earlier background write failed (e.g. a full disk since freed): this one replaces it
            save_snapshot(self.snapshot_path, state, fsync=self.options.fsync)
            return
        if self._writer is None:
            self._writer = SnapshotWriter(self.snapshot_path, self.options.fsync, self.options.snapshot_interval)
        self._writer.submit(state)

    def drain(self) -> None:
        """Wait until the background writer has written the latest submitted snapshot."""
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        """Stop the writer thread (after its pending write), close the log and release the lock."""
        try:
            if self._writer is not None:
                self._writer.close()
        finally:
            self._writer = None
            if self._log is not None:
                self._log.close()
                self._log = None
            if self._lock is not None:
                self._lock.release()
                self._lock = None


class SnapshotWriter:
    """Background thread that writes the latest submitted snapshot atomically, coalescing bursts.

    After a write it waits ``min_interval`` seconds before the next one (unless flushed), so a fast
    stream of labels costs a few snapshots a second instead of one per label."""

    def __init__(self, path: Path, fsync: bool, min_interval: float = 0.0) -> None:
        self.path, self.fsync, self.min_interval = path, fsync, float(min_interval)
        self._cond = threading.Condition()
        self._pending: dict[str, Any] | None = None
        self._busy = False
        self._closed = False
        self._urgent = False
        self._last_write = -float("inf")
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bayesal-snapshot", daemon=True)
        self._thread.start()

    def submit(self, state: dict[str, Any]) -> None:
        """Hand over the newest state (replacing one not yet written)."""
        with self._cond:
            self._pending = state
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._pending is None:
                    return
                due = self._last_write + self.min_interval
                while not (self._closed or self._urgent) and time.monotonic() < due:
                    self._cond.wait(timeout=max(0.0, due - time.monotonic()))
                state, self._pending = self._pending, None
                self._busy = True
            try:
                save_snapshot(self.path, state, fsync=self.fsync)
                self._error = None  # a snapshot is the whole state: a later write supersedes a failed one
            except BaseException as err:  # noqa: BLE001 - reported by flush()
                self._error = err
            finally:
                self._last_write = time.monotonic()
                with self._cond:
                    self._busy = False
                    if self._pending is None:
                        self._urgent = False
                    self._cond.notify_all()

    def flush(self) -> None:
        """Write the pending state now and wait; raises :class:`~bayesal.exceptions.StorageError` if the
        latest background write failed (one that a later successful write superseded is forgotten)."""
        with self._cond:
            self._urgent = True
            self._cond.notify_all()
            while self._pending is not None or self._busy:
                self._cond.wait()
            self._urgent = False
        if self._error is not None:
            err, self._error = self._error, None
            raise StorageError(f"writing the snapshot {self.path} failed ({err!r}); the label log still holds "
                               "every event, so Session.resume() or Session.recover() rebuilds it") from err

    def close(self) -> None:
        """Flush, then stop the thread."""
        try:
            self.flush()
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            self._thread.join()

"""The files of a labeling session directory and how a damaged one is salvaged.

A session directory holds the label log ``labels.jsonl`` (the source of truth: a header line, then
one line per event) and the snapshot ``session.state`` (a cache of the same events plus the posterior,
for fast resume); see :mod:`bayesal.labeling.storage` for the file formats and :mod:`bayesal.labeling.session` for
the events. This module knows the names, reads a log strictly (:func:`read_session_log`), writes
snapshots in the background (:class:`SnapshotWriter`) and plans a recovery (:func:`plan_recovery`):
which copy of the events to trust when the log or the snapshot is damaged, missing or from another
session. Planning touches no file; :func:`carry_out` applies a plan only after the session has
replayed the events successfully, and it moves every file it replaces aside instead of deleting it.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bayesal.utils.atomic import atomic_write_bytes, fsync_dir

from .storage import (
    CorruptStateError,
    LabelLog,
    LogReadResult,
    encode_record,
    load_snapshot,
    read_log,
    save_snapshot,
)

__all__ = [
    "FORMAT_VERSION", "LOG_NAME", "STATE_NAME", "TORN_NOTE", "SnapshotWriter", "read_session_header", "read_session_log", "RecoveryPlan",
    "plan_recovery", "carry_out", "set_aside",
]

FORMAT_VERSION = 1
LOG_NAME = "labels.jsonl"
STATE_NAME = "session.state"
TORN_NOTE = "dropped an incomplete last line of the label log (a write cut off by a crash, never acknowledged)"


def read_session_log(state_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """``(header, events, valid_bytes)`` of the log in ``state_dir``; a torn last line is ignored.

    Raises ``FileNotFoundError`` without a log and :class:`CorruptStateError` for a damaged line
    (a complete line that fails its checksum), a missing/unsupported header or events out of sequence.
    """
    log_path = state_dir / LOG_NAME
    if not log_path.exists():
        raise FileNotFoundError(f"no label log {log_path}; is {state_dir} a session directory?")
    return _checked_log(read_log(log_path), log_path)


def _checked_log(res: LogReadResult, log_path: Path) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """:func:`read_session_log` of an already read log."""
    if res.bad_lines:
        raise CorruptStateError(
            f"label log {log_path} is corrupt at line {res.bad_lines[0]} (checksum mismatch); the "
            f"{max(0, len(res.records) - 1)} events before it are intact"
        )
    header, events = _header_and_events(res.records, log_path)
    if len(events) != len(res.records) - 1:
        k = len(events) + 1
        raise CorruptStateError(f"label log {log_path}: line {k + 1} has seq {res.records[k].get('seq')!r}, expected {k}")
    return header, events, res.valid_bytes


def read_session_header(state_dir: Path) -> dict[str, Any]:
    """The session header: from the label log, else (log missing or damaged) from the state file."""
    log, state = state_dir / LOG_NAME, state_dir / STATE_NAME
    recs = read_log(log).records if log.exists() else []
    if recs and recs[0].get("op") == "header":
        return recs[0]
    if state.exists():
        try:
            return load_snapshot(state)["header"]
        except (ValueError, KeyError, TypeError):
            pass
    if not log.exists() and not state.exists():
        raise FileNotFoundError(f"{state_dir} holds no labeling session (no {LOG_NAME}, no {STATE_NAME})")
    raise ValueError(f"neither the label log nor the state file in {state_dir} has a readable session header; "
                     "the session cannot be reopened")


def _header_and_events(records: list[dict[str, Any]], where: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The header and the longest prefix of events numbered 1, 2, …"""
    if not records or records[0].get("op") != "header":
        raise CorruptStateError(f"label log {where} has no valid header line")
    header = records[0]
    if header.get("format") != FORMAT_VERSION:
        raise CorruptStateError(f"label log {where} has unsupported format {header.get('format')!r}")
    events: list[dict[str, Any]] = []
    for k, ev in enumerate(records[1:], start=1):
        if ev.get("seq") != k:
            break
        events.append(ev)
    return header, events


def set_aside(path: Path, tag: str, *, copy: bool = False) -> Path:
    """Rename (or, with ``copy=True``, durably copy) ``path`` to ``path.<tag>`` (``.<tag>.1``, … if
    taken); returns the new path."""
    target = path.with_name(f"{path.name}.{tag}")
    k = 0
    while target.exists():
        k += 1
        target = path.with_name(f"{path.name}.{tag}.{k}")
    if copy:
        atomic_write_bytes(target, path.read_bytes(), fsync=True)
    else:
        os.replace(path, target)
        fsync_dir(path.parent)
    return target


@dataclass
class RecoveryPlan:
    """What :func:`plan_recovery` decided: the events to rebuild from and what to do with the files.

    ``rewrite_log``: the log must be rewritten from ``header`` + ``events`` (it is damaged, missing or
    shorter than the snapshot); ``log_aside`` / ``state_aside``: tags under which the current log /
    snapshot are kept (``None``: the file is reproduced by the plan, or absent); ``notes``: one line per
    decision, for the user.
    """

    header: dict[str, Any]
    events: list[dict[str, Any]]
    valid_bytes: int
    rewrite_log: bool = False
    log_aside: str | None = None
    state_aside: str | None = None
    notes: list[str] = field(default_factory=list)


def _read_snapshot_events(state_path: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]] | None, str | None]:
    """``(header, events, problem)`` of a snapshot; ``problem`` says why it cannot be used."""
    if not state_path.exists():
        return None, None, "missing"
    try:
        snap = load_snapshot(state_path)
        header, events = snap["header"], list(snap["events"])
    except (CorruptStateError, KeyError, TypeError, OSError) as err:
        return None, None, f"unreadable ({err})"
    if not isinstance(header, dict) or header.get("format") != FORMAT_VERSION:
        return None, None, "unreadable (no valid header)"
    if any(not isinstance(ev, dict) or ev.get("seq") != k for k, ev in enumerate(events, start=1)):
        return None, None, "unreadable (events out of sequence)"
    return header, events, None


def plan_recovery(state_dir: Path, *, drop_damaged: bool = False) -> RecoveryPlan:
    """Decide how to rebuild the session in ``state_dir`` without losing an acknowledged event.

    Trusts the longest consistent copy of the event sequence: the log, or the snapshot where the log is
    damaged, missing or shorter and the snapshot belongs to the same session and agrees with the log's
    intact part. If only a damaged log remains, the events before the damage are kept only with
    ``drop_damaged=True`` (the damaged log is kept aside either way). Touches no file.
    """
    log_path, state_path = state_dir / LOG_NAME, state_dir / STATE_NAME
    snap_header, snap_events, snap_problem = _read_snapshot_events(state_path)
    log_problem: str | None = None
    header: dict[str, Any] | None = None
    events: list[dict[str, Any]] = []
    valid_bytes = 0
    dropped = 0
    if not log_path.exists():
        if snap_header is None:
            raise FileNotFoundError(f"no label log {log_path}; is {state_dir} a session directory?")
        log_problem = f"no label log {log_path}"
    else:
        res = read_log(log_path)
        try:
            header, events, valid_bytes = _checked_log(res, log_path)
        except CorruptStateError as err:
            log_problem = str(err)
            try:
                header, events = _header_and_events(res.records, log_path)
            except CorruptStateError:
                header, events = None, []
            dropped = max(0, res.n_lines - 1 - len(events))
    if header is None and snap_header is None:
        raise CorruptStateError(
            f"neither the label log nor the state file in {state_dir} holds a readable session "
            f"(log: {log_problem}; state file: {snap_problem})"
        )

    same_session = header is None or (snap_header is not None and snap_header.get("session_id") == header.get("session_id"))
    snap_extends = (
        snap_events is not None and same_session and len(snap_events) >= len(events)
        and snap_events[: len(events)] == events
    )
    if snap_extends and (log_problem is not None or len(snap_events) > len(events)):
        assert snap_header is not None and snap_events is not None
        plan = RecoveryPlan(snap_header, snap_events, 0, rewrite_log=True)
        if log_problem is not None and log_path.exists():
            plan.log_aside = "damaged"
        why = log_problem or f"the label log holds {len(events)} of the snapshot's {len(snap_events)} events"
        plan.notes.append(f"rebuilt the label log from the state file's {len(snap_events)} events ({why})")
        return plan
    if header is None:  # only a log without a valid header and a snapshot of another session
        raise CorruptStateError(f"{log_problem}; the state file in {state_dir} cannot replace it")
    if log_problem is not None:
        if not drop_damaged:
            if snap_problem is not None:
                why = f"it is {snap_problem}"
            elif not same_session:
                why = "it belongs to another session"
            elif snap_events is not None and snap_events[: len(events)] != events[: len(snap_events)]:
                why = "it disagrees with the log"
            else:
                why = f"it holds {len(snap_events or [])} events, the log's intact part {len(events)}"
            raise CorruptStateError(
                f"{log_problem}. The state file cannot supply the later events ({why}). Recover with "
                f"drop_damaged=True (bayesal label --resume DIR --recover --drop-damaged) to keep the {len(events)} "
                f"events before the damage; the {dropped} line(s) from the damage on are not replayed (after a lost "
                f"event their meaning, e.g. of an undo, cannot be trusted) and the log is kept as {LOG_NAME}.damaged"
            )
        plan = RecoveryPlan(header, events, 0, rewrite_log=True, log_aside="damaged")
        plan.notes.append(
            f"kept the {len(events)} events before the damage in the label log; the {dropped} line(s) from the "
            f"damage on were not replayed and are kept in {LOG_NAME}.damaged"
        )
    else:
        plan = RecoveryPlan(header, events, valid_bytes)
        if valid_bytes < log_path.stat().st_size:
            plan.notes.append(TORN_NOTE)
    reproduced = snap_events is not None and same_session and snap_events == plan.events[: len(snap_events)]
    if snap_problem == "missing" or reproduced:
        pass
    elif snap_problem is not None:
        plan.state_aside = "corrupt"
        plan.notes.append(f"the state file was {snap_problem}; kept as {STATE_NAME}.corrupt")
    else:
        plan.state_aside = "replaced"
        what = "belongs to another session" if not same_session else "disagrees with the label log"
        plan.notes.append(f"the state file {what}; kept as {STATE_NAME}.replaced")
    return plan


def carry_out(plan: RecoveryPlan, state_dir: Path, *, fsync: bool = True) -> LabelLog:
    """Apply ``plan``'s file moves and return the label log opened for appending (locked)."""
    log_path, state_path = state_dir / LOG_NAME, state_dir / STATE_NAME
    if plan.state_aside and state_path.exists():
        set_aside(state_path, plan.state_aside)
    if not plan.rewrite_log:
        return LabelLog.open(log_path, plan.valid_bytes, fsync=fsync)
    if log_path.exists():
        if plan.log_aside:
            # a copy, then an atomic replace: a crash in between still leaves a log in place
            set_aside(log_path, plan.log_aside, copy=True)
        return LabelLog.rewrite(log_path, [plan.header, *plan.events], fsync=fsync)
    data = b"".join(encode_record(r) for r in [plan.header, *plan.events])
    atomic_write_bytes(log_path, data, fsync=True)
    return LabelLog.open(log_path, len(data), fsync=fsync)


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
        with self._cond:
            self._urgent = True
            self._cond.notify_all()
            while self._pending is not None or self._busy:
                self._cond.wait()
            self._urgent = False
        if self._error is not None:
            err, self._error = self._error, None
            raise RuntimeError(f"writing the snapshot {self.path} failed: {err!r}") from err

    def close(self) -> None:
        try:
            self.flush()
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            self._thread.join()

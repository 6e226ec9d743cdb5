"""Which copy of a session's events to trust when reopening its directory, and how to salvage it.

A session directory holds the label log (the source of truth: a header line, then one line per event)
and the snapshot (a cache of the same events plus the posterior, for fast resume); see
:mod:`bayesal.labeling.storage` for the formats. Reopening reads both once (:func:`scan_directory`) and
turns what it found into a :class:`RecoveryPlan`:

* :func:`plan_resume` is strict: it accepts a snapshot that agrees with the log (a lagging snapshot,
  a torn last log line, or — only possible without fsync — a log shorter than the snapshot) and raises
  :class:`~bayesal.exceptions.CorruptStateError` for any damage, naming :func:`plan_recovery` as the way out;
* :func:`plan_recovery` trusts the longest consistent copy of the event sequence and says which files
  to keep aside.

Planning touches no file. :func:`carry_out` applies a plan only after the session has replayed its
events successfully, and it moves every file it replaces aside instead of deleting it. Nothing here
knows posteriors: a plan carries the snapshot's posterior state as an opaque dict.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bayesal.exceptions import CorruptStateError, SessionNotFoundError
from bayesal.utils import atomic_write_bytes, fsync_dir

from .schema import check_event, check_header, check_snapshot
from .storage import (
    FORMAT_VERSION,
    LOG_NAME,
    STATE_NAME,
    LabelLog,
    LogReadResult,
    encode_record,
    load_snapshot,
    read_log,
)

__all__ = [
    "TORN_NOTE", "RecoveryPlan", "DirectoryScan", "scan_directory", "plan_resume", "plan_recovery",
    "carry_out", "set_aside", "read_session_log", "read_session_header",
]

TORN_NOTE = "dropped an incomplete last line of the label log (a write cut off by a crash, never acknowledged)"

Event = dict[str, Any]


def _no_session(state_dir: Path) -> SessionNotFoundError:
    return SessionNotFoundError(f"no label log {state_dir / LOG_NAME}; is {state_dir} a session directory?")


# ----------------------------------------------------------------------------------- reading
def _checked_log(res: LogReadResult, log_path: Path) -> tuple[Event, list[Event], int]:
    """``(header, events, valid_bytes)`` of a read log; :class:`CorruptStateError` for any damage."""
    if res.bad_lines:
        raise CorruptStateError(
            f"label log {log_path} is corrupt at line {res.bad_lines[0]} (checksum mismatch); the "
            f"{max(0, len(res.records) - 1)} events before it are intact"
        )
    header, events = _header_and_events(res.records, log_path)
    if len(events) != len(res.records) - 1:
        k = len(events) + 1
        check_event(res.records[k], k, f"label log {log_path} (line {k + 1})")  # raises, naming the problem
        raise CorruptStateError(f"label log {log_path}: line {k + 1} has seq {res.records[k].get('seq')!r}, expected {k}")
    return header, events, res.valid_bytes


def _header_and_events(records: list[Event], where: Path) -> tuple[Event, list[Event]]:
    """The header and the longest prefix of events numbered 1, 2, …"""
    if not records or records[0].get("op") != "header":
        raise CorruptStateError(f"label log {where} has no valid header line")
    header = records[0]
    if header.get("format") != FORMAT_VERSION:
        raise CorruptStateError(f"label log {where} has unsupported format {header.get('format')!r}")
    check_header(header, f"label log {where}", complete=False)
    events: list[Event] = []
    for k, ev in enumerate(records[1:], start=1):
        try:
            check_event(ev, k, f"label log {where} (line {k + 1})")
        except CorruptStateError:
            break  # the intact prefix ends here; _checked_log names the problem
        events.append(ev)
    return header, events


def read_session_log(state_dir: Path) -> tuple[Event, list[Event], int]:
    """``(header, events, valid_bytes)`` of the log in ``state_dir``; a torn last line is ignored.

    Raises :class:`~bayesal.exceptions.SessionNotFoundError` without a log and
    :class:`~bayesal.exceptions.CorruptStateError` for a damaged line (a complete line that fails its
    checksum), a missing/unsupported header or events out of sequence.
    """
    log_path = state_dir / LOG_NAME
    if not log_path.exists():
        raise _no_session(state_dir)
    return _checked_log(read_log(log_path), log_path)


def read_session_header(state_dir: Path) -> Event:
    """The session header: from the label log, else (log missing or damaged) from the state file.

    Raises :class:`~bayesal.exceptions.SessionNotFoundError` if neither file exists and
    :class:`~bayesal.exceptions.CorruptStateError` if neither has a readable header.
    """
    log, state = state_dir / LOG_NAME, state_dir / STATE_NAME
    recs = read_log(log).records if log.exists() else []
    if recs and recs[0].get("op") == "header":
        try:
            return check_header(recs[0], f"label log {log}", complete=False)
        except CorruptStateError:
            pass
    if state.exists():
        try:
            return check_snapshot(load_snapshot(state), f"state file {state}")["header"]
        except (ValueError, KeyError, TypeError):
            pass
    if not log.exists() and not state.exists():
        raise SessionNotFoundError(f"{state_dir} holds no labeling session (no {LOG_NAME}, no {STATE_NAME})")
    raise CorruptStateError(f"neither the label log nor the state file in {state_dir} has a readable session "
                            "header; the session cannot be reopened")


@dataclass
class DirectoryScan:
    """What a session directory holds, read once and checked, before anything is decided.

    Log side: ``header`` / ``events`` (the intact prefix) / ``valid_bytes``, ``log_exists``,
    ``log_size``, ``log_problem`` (why the log is not fully usable) and ``dropped`` (complete lines
    after its intact part). Snapshot side: the loaded ``snapshot`` with its ``snap_header`` /
    ``snap_events``, or ``snap_problem`` (``"missing"`` or why it is unusable) with ``snap_error``.
    """

    state_dir: Path
    log_exists: bool = False
    log_size: int = 0
    header: Event | None = None
    events: list[Event] = field(default_factory=list)
    valid_bytes: int = 0
    log_problem: CorruptStateError | None = None
    dropped: int = 0
    snapshot: dict[str, Any] | None = None
    snap_header: Event | None = None
    snap_events: list[Event] | None = None
    snap_problem: str | None = None
    snap_error: CorruptStateError | None = None

    @property
    def same_session(self) -> bool:
        """The snapshot belongs to the log's session (trivially when the log has no header)."""
        if self.header is None:
            return True
        return self.snap_header is not None and self.snap_header.get("session_id") == self.header.get("session_id")

    def first_disagreement(self) -> int | None:
        """0-based index of the first event where log and snapshot differ on their common part."""
        snap = self.snap_events or []
        n = min(len(snap), len(self.events))
        return next((k for k in range(n) if snap[k] != self.events[k]), None)

    @property
    def snap_extends_log(self) -> bool:
        """The snapshot is this session's and starts with every intact log event."""
        return (self.snap_events is not None and self.same_session and len(self.snap_events) >= len(self.events)
                and self.first_disagreement() is None)


def _scan_snapshot(scan: DirectoryScan) -> None:
    path = scan.state_dir / STATE_NAME
    if not path.exists():
        scan.snap_problem = "missing"
        return
    try:
        snap = check_snapshot(load_snapshot(path), f"state file {path}")
        header, events = snap["header"], list(snap["events"])
    except CorruptStateError as err:
        scan.snap_problem, scan.snap_error = f"unreadable ({err})", err
        return
    except (KeyError, TypeError, OSError) as err:
        scan.snap_problem = f"unreadable ({err!r})"
        scan.snap_error = CorruptStateError(f"state file {path} is corrupt: missing or bad entry {err}")
        return
    if not isinstance(header, dict) or header.get("format") != FORMAT_VERSION:
        why = "no valid header"
    elif any(not isinstance(ev, dict) or ev.get("seq") != k for k, ev in enumerate(events, start=1)):
        why = "events out of sequence"
    else:
        scan.snapshot, scan.snap_header, scan.snap_events = snap, header, events
        return
    scan.snap_problem = f"unreadable ({why})"
    scan.snap_error = CorruptStateError(f"state file {path} is corrupt: {why}")


def _scan_log(scan: DirectoryScan) -> None:
    path = scan.state_dir / LOG_NAME
    scan.log_exists = path.exists()
    if not scan.log_exists:
        return
    scan.log_size = path.stat().st_size
    res = read_log(path)
    try:
        scan.header, scan.events, scan.valid_bytes = _checked_log(res, path)
    except CorruptStateError as err:
        scan.log_problem = err
        try:
            scan.header, scan.events = _header_and_events(res.records, path)
        except CorruptStateError:
            scan.header, scan.events = None, []
        scan.dropped = max(0, res.n_lines - 1 - len(scan.events))


def scan_directory(state_dir: Path) -> DirectoryScan:
    """Read and check the label log and the snapshot of ``state_dir`` (touches no file)."""
    scan = DirectoryScan(Path(state_dir))
    _scan_log(scan)
    _scan_snapshot(scan)
    return scan


# ----------------------------------------------------------------------------------- plans
@dataclass
class RecoveryPlan:
    """How to reopen a session: the events to rebuild it from and what to do with its files.

    ``events``: every event, in order. ``posterior_state``: the snapshot's posterior, which already
    reflects the first ``cached`` events (``None``: replay the posterior from the events);
    ``snapshot``: that snapshot (for cross-checks). ``rewrite_log``: the log is rewritten from
    ``header`` + ``events`` (damaged, missing or shorter than the snapshot); otherwise it is reopened
    at ``valid_bytes``. ``log_aside`` / ``state_aside``: tags under which the current log / snapshot
    are kept (``None``: reproduced by the plan, or absent). ``write_snapshot``: a fresh snapshot is
    due once the session is rebuilt. ``notes``: one line per decision, for the user.
    """

    header: Event
    events: list[Event]
    valid_bytes: int
    rewrite_log: bool = False
    log_aside: str | None = None
    state_aside: str | None = None
    notes: list[str] = field(default_factory=list)
    posterior_state: dict[str, Any] | None = None
    snapshot: dict[str, Any] | None = None
    cached: int = 0
    write_snapshot: bool = True

    def where(self, k: int) -> str:
        """Where event ``k`` (0-based) was read, for error messages."""
        if k < self.cached:
            return f"state file event {k + 1}"
        return f"event {k + 1}" if self.rewrite_log else f"label log line {k + 2}"


def plan_resume(state_dir: Path) -> RecoveryPlan:
    """Plan to reopen ``state_dir`` from its snapshot plus the log events the snapshot lacks.

    A missing snapshot is only a missing cache: the plan is then :func:`plan_recovery`'s. Raises
    :class:`~bayesal.exceptions.SessionNotFoundError` if the directory holds no session and
    :class:`~bayesal.exceptions.CorruptStateError` if the log or snapshot is damaged, missing or
    disagrees with the other. Touches no file.
    """
    state_dir = Path(state_dir)
    scan = scan_directory(state_dir)
    state_path = state_dir / STATE_NAME
    if scan.snap_problem == "missing":
        if not scan.log_exists:
            raise SessionNotFoundError(f"no state file {state_path} and no label log; is {state_dir} a session directory?")
        return _plan_recovery(scan, drop_damaged=False)
    if not scan.log_exists:
        raise CorruptStateError(f"the label log {state_dir / LOG_NAME} is missing; Session.recover() rebuilds it "
                                "from the state file")
    if scan.snap_error is not None:
        raise scan.snap_error
    if scan.log_problem is not None:
        raise scan.log_problem
    snap, snap_events = scan.snapshot, scan.snap_events
    if snap is None or snap_events is None or scan.header is None:  # ruled out above; keeps types narrow
        raise CorruptStateError(f"the session files in {state_dir} cannot be read; use Session.recover()")
    if "posterior" not in snap:
        raise CorruptStateError(f"state file {state_path} is corrupt: missing entry 'posterior'")
    if not scan.same_session:
        raise CorruptStateError(f"state file {state_path} belongs to another session than the label log")
    k = scan.first_disagreement()
    if k is not None:
        raise CorruptStateError(f"state file {state_path} and label log disagree at event {k + 1}; use Session.recover()")
    log_shorter = len(scan.events) < len(snap_events)
    plan = RecoveryPlan(
        scan.header, snap_events if log_shorter else scan.events, scan.valid_bytes,
        rewrite_log=log_shorter, posterior_state=snap["posterior"], snapshot=snap, cached=len(snap_events),
        write_snapshot=len(scan.events) > len(snap_events),
    )
    if log_shorter:  # only possible with fsync=False: the log lost lines the snapshot has
        plan.notes.append("the label log lacked events the state file holds; rewrote it from them")
    elif scan.valid_bytes < scan.log_size:
        plan.notes.append(TORN_NOTE)
    return plan


def plan_recovery(state_dir: Path, *, drop_damaged: bool = False) -> RecoveryPlan:
    """Decide how to rebuild the session in ``state_dir`` without losing an acknowledged event.

    Trusts the longest consistent copy of the event sequence: the log, or the snapshot where the log is
    damaged, missing or shorter and the snapshot belongs to the same session and agrees with the log's
    intact part. If only a damaged log remains, the events before the damage are kept only with
    ``drop_damaged=True`` (the damaged log is kept aside either way). Touches no file.
    """
    return _plan_recovery(scan_directory(Path(state_dir)), drop_damaged=drop_damaged)


def _plan_recovery(scan: DirectoryScan, *, drop_damaged: bool) -> RecoveryPlan:
    state_dir = scan.state_dir
    log_problem = str(scan.log_problem) if scan.log_problem is not None else None
    if not scan.log_exists:
        if scan.snap_header is None:
            raise _no_session(state_dir)
        log_problem = f"no label log {state_dir / LOG_NAME}"
    header, events, snap_events = scan.header, scan.events, scan.snap_events
    if header is None and scan.snap_header is None:
        raise CorruptStateError(
            f"neither the label log nor the state file in {state_dir} holds a readable session "
            f"(log: {log_problem}; state file: {scan.snap_problem})"
        )
    if scan.snap_header is not None and snap_events is not None and scan.snap_extends_log and (
            log_problem is not None or len(snap_events) > len(events)):
        plan = RecoveryPlan(scan.snap_header, snap_events, 0, rewrite_log=True,
                            log_aside="damaged" if log_problem is not None and scan.log_exists else None)
        why = log_problem or f"the label log holds {len(events)} of the snapshot's {len(snap_events)} events"
        plan.notes.append(f"rebuilt the label log from the state file's {len(snap_events)} events ({why})")
        return plan
    if header is None:  # only a log without a valid header and a snapshot of another session
        raise CorruptStateError(f"{log_problem}; the state file in {state_dir} cannot replace it")
    if log_problem is not None:
        if not drop_damaged:
            raise CorruptStateError(
                f"{log_problem}. The state file cannot supply the later events ({_why_snapshot_cannot(scan)}). "
                f"Recover with drop_damaged=True (bayesal label --resume DIR --recover --drop-damaged) to keep the "
                f"{len(events)} events before the damage; the {scan.dropped} line(s) from the damage on are not "
                "replayed (after a lost event their meaning, e.g. of an undo, cannot be trusted) and the log is "
                f"kept as {LOG_NAME}.damaged"
            )
        plan = RecoveryPlan(header, events, 0, rewrite_log=True, log_aside="damaged")
        plan.notes.append(
            f"kept the {len(events)} events before the damage in the label log; the {scan.dropped} line(s) from the "
            f"damage on were not replayed and are kept in {LOG_NAME}.damaged"
        )
    else:
        plan = RecoveryPlan(header, events, scan.valid_bytes)
        if scan.valid_bytes < scan.log_size:
            plan.notes.append(TORN_NOTE)
    reproduced = snap_events is not None and scan.same_session and snap_events == plan.events[: len(snap_events)]
    if scan.snap_problem == "missing" or reproduced:
        pass
    elif scan.snap_problem is not None:
        plan.state_aside = "corrupt"
        plan.notes.append(f"the state file was {scan.snap_problem}; kept as {STATE_NAME}.corrupt")
    else:
        plan.state_aside = "replaced"
        what = "belongs to another session" if not scan.same_session else "disagrees with the label log"
        plan.notes.append(f"the state file {what}; kept as {STATE_NAME}.replaced")
    return plan


def _why_snapshot_cannot(scan: DirectoryScan) -> str:
    """Why the snapshot cannot replace a damaged log (for the error message)."""
    if scan.snap_problem is not None:
        return f"it is {scan.snap_problem}"
    if not scan.same_session:
        return "it belongs to another session"
    if scan.first_disagreement() is not None:
        return "it disagrees with the log"
    return f"it holds {len(scan.snap_events or [])} events, the log's intact part {len(scan.events)}"


# ----------------------------------------------------------------------------------- applying
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

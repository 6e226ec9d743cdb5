"""A class added to a saved session: the header's class list grows by one name at the end.

Every recorded label names a class by its index, so appending a class changes none of them (a prior mean
gains a row: the given one, or zeros — no zero-shot guess for that class): the label
log is rewritten atomically with the longer list in its header and the same events, and the snapshot
(a cache whose posterior has one row fewer) is removed first — a crash in between leaves the old log
without a snapshot, which resumes to the session as it was. Reopening replays the events into a
posterior with one more class, whose new row starts at the prior.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from bayesal.exceptions import CorruptStateError, InvalidInputError

from .schema import MAX_CLASSES, check_header
from .storage import LOG_NAME, STATE_NAME, DirectoryLock, LabelLog, read_log

__all__ = ["append_class", "check_new_class"]


def check_new_class(name: object, names: list[str]) -> str:
    """``name`` stripped, if it can be a new class besides ``names``; else :class:`InvalidInputError`."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidInputError("a new class needs a non-empty name")
    name = name.strip()
    if len(name) > 1000:
        raise InvalidInputError("a class name must be at most 1000 characters")
    if name in names:
        raise InvalidInputError(f"there is a class {name!r} already")
    if len(names) >= MAX_CLASSES:
        raise InvalidInputError(f"a session holds at most {MAX_CLASSES} classes")
    return name


def append_class(state_dir: str | Path, name: str, *, fsync: bool = True,
                 prior_row: Sequence[float] | None = None) -> list[str]:
    """Append class ``name`` to the closed session in ``state_dir``; returns the new class names.

    A session with a prior mean gains ``prior_row`` ``(D,)`` as the new class's row of it (zeros if None).

    Raises
    ------
    InvalidInputError
        An empty or existing name.
    SessionLockedError
        The session is open (in this or another process).
    CorruptStateError
        The label log is damaged (recover the session first).
    """
    path = Path(state_dir)
    lock = DirectoryLock(path)
    try:
        log = read_log(path / LOG_NAME)
        if log.bad_lines or not log.records:
            raise CorruptStateError(f"the label log {path / LOG_NAME} is damaged; recover the session before adding a class")
        header = check_header(dict(log.records[0]), f"label log {path / LOG_NAME}")
        names = list(header["class_names"])
        name = check_new_class(name, names)
        header["class_names"] = [*names, name]
        if header.get("prior_mean") is not None:
            row = [0.0] * int(header["num_features"]) if prior_row is None else [float(v) for v in prior_row]
            if len(row) != int(header["num_features"]) or not all(math.isfinite(v) for v in row):
                raise InvalidInputError(f"the new class's prior row must hold {header['num_features']} finite numbers")
            header["prior_mean"] = [*header["prior_mean"], row]
        snapshot = path / STATE_NAME
        if snapshot.exists():  # first: a crash before the log is replaced must not pair it with the old log
            snapshot.unlink()
        LabelLog.rewrite(path / LOG_NAME, [header, *log.records[1:]], fsync=fsync).close()
        return header["class_names"]
    finally:
        lock.release()

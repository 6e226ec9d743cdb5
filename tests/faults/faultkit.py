"""Fault-injection tools shared by the fault/fuzz tests and ``benchmarks/faults.py``.

* :class:`Tally` counts outcomes: a bayesal error (clear), a correct result, another exception type,
  a wrong result (silent drop), a hang.
* :meth:`Tally.attempt` runs one input under a wall-clock alarm and classifies what happened.
* :func:`disk_full_after` makes the N-th and later ``os.write`` calls fail with ``ENOSPC`` — every
  bayesal write path (atomic writes, the label log, CSV results) goes through ``os.write``.
* :func:`read_only` makes writes below a directory fail with ``EROFS`` (root ignores ``chmod``).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import os
import signal
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bayesal.exceptions import BayesalError

KEYS = ("inputs_tried", "clear_errors", "other_exceptions", "silent_drops", "hangs", "lost_labels",
        "lost_result_rows")


class Hang(BaseException):
    """Raised by the alarm when one input runs past its time limit (a BaseException: nothing swallows it)."""


@dataclass
class Tally:
    """Outcome counts of a fault/fuzz campaign, with a few examples of each bad outcome."""

    inputs_tried: int = 0
    clear_errors: int = 0
    correct: int = 0
    other_exceptions: int = 0
    silent_drops: int = 0
    hangs: int = 0
    lost_labels: int = 0
    lost_result_rows: int = 0
    examples: dict[str, list[str]] = field(default_factory=dict)

    def note(self, kind: str, what: str) -> None:
        self.examples.setdefault(kind, [])
        if len(self.examples[kind]) < 5:
            self.examples[kind].append(what)

    def attempt(self, label: str, fn: Callable[[], Any], check: Callable[[Any], bool] | None = None,
                timeout: float = 30.0) -> str:
        """Run ``fn()``; a :class:`BayesalError` is a clear error, a result passing ``check`` is correct,
        a result failing it a silent drop, any other exception an other exception, a run past
        ``timeout`` seconds a hang. Returns the outcome's name."""
        self.inputs_tried += 1
        old = signal.signal(signal.SIGALRM, _alarm)
        # re-fires every second after the limit: an alarm swallowed somewhere (a gc callback) comes back
        signal.setitimer(signal.ITIMER_REAL, timeout, 1.0)
        try:
            result = fn()
        except Hang:
            self.hangs += 1
            self.note("hang", label)
            return "hang"
        except BayesalError:
            self.clear_errors += 1
            return "clear_error"
        except Exception as err:  # noqa: BLE001 - the point: count anything that is not ours
            self.other_exceptions += 1
            self.note("other_exception", f"{label}: {type(err).__name__}: {err} "
                      f"@ {traceback.extract_tb(err.__traceback__)[-1].filename.rsplit('/', 1)[-1]}")
            return "other_exception"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
        if check is not None and not check(result):
            self.silent_drops += 1
            self.note("silent_drop", label)
            return "silent_drop"
        self.correct += 1
        return "correct"

    def add(self, other: Tally) -> Tally:
        for k in (*KEYS, "correct"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        for kind, items in other.examples.items():
            for item in items:
                self.note(kind, item)
        return self

    def bad(self) -> int:
        return self.other_exceptions + self.silent_drops + self.hangs + self.lost_labels + self.lost_result_rows

    def line(self) -> str:
        return " ".join(f"{k}={getattr(self, k)}" for k in KEYS)


def _alarm(signum: int, frame: Any) -> None:
    raise Hang()


@contextlib.contextmanager
def disk_full_after(n_ok: int, code: int = errno.ENOSPC, partial: bool = False) -> Iterator[dict[str, int]]:
    """``os.write`` succeeds ``n_ok`` times, then fails with ``code`` (the disk fills up); the yielded
    dict counts the calls. With ``partial=True`` the first failing call first writes half of its data
    and returns that short count (the space ran out mid-write); the calls after it fail."""
    real = os.write
    calls = {"n": 0}

    def write(fd: int, data: Any) -> int:
        calls["n"] += 1
        if calls["n"] > n_ok:
            size = len(memoryview(data).cast("B"))
            if partial and calls["n"] == n_ok + 1 and size > 1:
                return real(fd, memoryview(data).cast("B")[: size // 2])
            raise OSError(code, os.strerror(code))
        return real(fd, data)

    os.write = write  # type: ignore[assignment]
    try:
        yield calls
    finally:
        os.write = real  # type: ignore[assignment]


@contextlib.contextmanager
def read_only(root: str | os.PathLike[str]) -> Iterator[None]:
    """Every attempt to create, write, rename or remove below ``root`` fails with ``EROFS``."""
    root_s = os.fspath(Path(root).resolve())
    real_open, real_mkdir, real_replace, real_rename, real_unlink = os.open, os.mkdir, os.replace, os.rename, os.unlink
    real_builtin_open, real_io_open = builtins.open, io.open
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def inside(path: Any) -> bool:
        try:
            p = os.path.abspath(os.fspath(path))
        except TypeError:
            return False
        return p == root_s or p.startswith(root_s + os.sep)

    def refuse(path: Any) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    def o_open(path: Any, flags: int, *a: Any, **k: Any) -> int:
        if flags & write_flags and inside(path):
            refuse(path)
        return real_open(path, flags, *a, **k)

    def o_mkdir(path: Any, *a: Any, **k: Any) -> None:
        if inside(path):
            refuse(path)
        return real_mkdir(path, *a, **k)

    def o_move(real: Callable[..., Any]) -> Callable[..., Any]:
        def move(src: Any, dst: Any, *a: Any, **k: Any) -> Any:
            if inside(src) or inside(dst):
                refuse(dst)
            return real(src, dst, *a, **k)
        return move

    def o_unlink(path: Any, *a: Any, **k: Any) -> None:
        if inside(path):
            refuse(path)
        return real_unlink(path, *a, **k)

    def b_open(file: Any, mode: str = "r", *a: Any, **k: Any) -> Any:
        if isinstance(file, (str, bytes, os.PathLike)) and any(m in mode for m in "wax+") and inside(file):
            refuse(file)
        return real_builtin_open(file, mode, *a, **k)

    os.open, os.mkdir, os.unlink = o_open, o_mkdir, o_unlink  # type: ignore[assignment]
    os.replace, os.rename = o_move(real_replace), o_move(real_rename)  # type: ignore[assignment]
    builtins.open = io.open = b_open  # type: ignore[assignment]
    try:
        yield
    finally:
        os.open, os.mkdir, os.unlink, os.replace, os.rename = real_open, real_mkdir, real_unlink, real_replace, real_rename
        builtins.open, io.open = real_builtin_open, real_io_open  # type: ignore[assignment]


def snapshot_tree(root: str | os.PathLike[str]) -> dict[str, bytes]:
    """Contents of every regular file below ``root`` (lock files and probes excluded): to check that a
    failed write left the files as they were."""
    out = {}
    for p in sorted(Path(root).rglob("*")):
        if p.is_file() and not p.name.endswith(".lock") and ".bayesal-probe" not in p.name:
            out[str(p.relative_to(root))] = p.read_bytes()
    return out

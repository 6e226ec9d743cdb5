"""A background thread that runs a session's head refits, the latest one only.

A refit (the head trained from scratch with λ₀ and the spread chosen by cross-validation) takes
seconds once there are thousands of labels. :class:`RefitWorker` runs it off the caller's thread: the
session logs the fit point at once, keeps absorbing answers as updates of the posterior it has and
swaps in the refit when the job completes (:class:`~bayesal.labeling.state.SessionState`). A job
submitted while another waits replaces it; a job already running finishes and its owner drops the
result if it was superseded meanwhile.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

__all__ = ["RefitWorker"]


class RefitWorker:
    """Runs the latest submitted job (a callable) in a thread that lives while there is work.

    The thread is not a daemon: an interpreter that exits waits for a running refit instead of
    killing it inside a computation; it ends as soon as no job is waiting."""

    def __init__(self, name: str = "bayesal-refit") -> None:
        self.name = name
        self._cond = threading.Condition()
        self._job: Callable[[], None] | None = None
        self._thread: threading.Thread | None = None  # alive while a job waits or runs

    def submit(self, job: Callable[[], None]) -> None:
        """Run ``job`` next (replacing a job not started yet). ``job`` handles its own errors."""
        with self._cond:
            self._job = job
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name)
                self._thread.start()

    def cancel(self) -> None:
        """Forget the job not started yet (one running finishes; its owner ignores the result)."""
        with self._cond:
            self._job = None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no job is waiting or running; False if ``timeout`` seconds passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._thread is None, timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                job, self._job = self._job, None
                if job is None:
                    self._thread = None
                    self._cond.notify_all()
                    return
            try:
                job()
            except Exception:  # noqa: BLE001, S110 - a job reports its own errors; the worker must go on
                pass

    def close(self, timeout: float | None = None) -> None:
        """Drop a waiting job and wait (up to ``timeout`` seconds) for a running one to finish."""
        with self._cond:
            self._job = None
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

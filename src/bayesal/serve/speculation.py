"""The next item, computed while the person reads the current one.

When a client is shown item ``i``, :class:`NextPickSpeculator` computes in a background thread, for
each likely answer ``c`` (the classes in the order of the model's predictive at ``i``, at most
``max_classes`` of them), the posterior that ``tell(i, c)`` gives (one Bayesian update) and the
session's query under it (the pool pass, the costly part). When the answer arrives, the service takes
the precomputed picks instead of querying again. They are computed by the session's own query on the
same operands (:meth:`~bayesal.labeling.session.Session.view_after_tell`,
:meth:`~bayesal.labeling.session.Session.query_in`), so they are the picks of the non-speculative loop.

Results are keyed by the service's state (its version and the session's swapped refits) when the
job started: any other change makes them useless, and a job whose state moved on stops between two
classes (one job runs at a time; a newer one replaces a waiting one). Picks not ready when the answer
arrives are computed as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import torch

from bayesal.labeling import QueryView, Session

__all__ = ["NextPickSpeculator", "DEFAULT_SPECULATED_CLASSES", "DEFAULT_START_DELAY"]

#: Answers speculated per item: the most probable classes under the predictive (every class when there are
#: no more; on a large pool queried whole, each answer after the first costs a pass over the pool's moments).
DEFAULT_SPECULATED_CLASSES = 10
#: Seconds an item is shown before its speculation starts (a person takes far longer to answer).
DEFAULT_START_DELAY = 0.05


@dataclass(frozen=True)
class _Job:
    generation: int
    key: Hashable
    index: int
    k: int
    view: QueryView
    order: tuple[int, ...]  # the answers to speculate, the most probable first


class NextPickSpeculator:
    """Background computation of the picks that follow each likely answer to the item shown.

    Parameters
    ----------
    session : Session
        The session whose queries are speculated (read only: nothing is recorded).
    max_classes : int
        How many answers to speculate per item, the most probable first.
    prepare : callable, optional
        Called in the background thread with the first pick of each speculated answer, e.g. to render
        that item (an image's thumbnail) before it is shown.
    start_delay : float
        Seconds an item is shown before its speculation starts: clients that answer faster than that
        (scripts, several people at once) do not pay for speculations that a newer answer stops.
    """

    def __init__(self, session: Session, max_classes: int = DEFAULT_SPECULATED_CLASSES,
                 prepare: Callable[[int], object] | None = None, start_delay: float = DEFAULT_START_DELAY) -> None:
        self._session = session
        self.start_delay = float(start_delay)
        self._prepare = prepare
        self.max_classes = int(max_classes)
        self._cond = threading.Condition()
        self._generation = 0
        self._job: _Job | None = None  # waiting to start
        self._busy = False  # a job is running
        self._inflight: tuple[Hashable, int, int] | None = None  # (key, index, label) being computed
        self._results: dict[tuple[Hashable, int, int], tuple[int, list[int]]] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        self._last: tuple[Hashable, int, int] | None = None  # (key, index, k) of the latest job
        self.hits = 0  # answers served from a speculation (for tests and benchmarks)
        self.misses = 0

    def schedule(self, key: Hashable, index: int, k: int) -> None:
        """Speculate on the answers to item ``index`` in the state ``key`` (the session's current one),
        for queries of ``k`` picks; a job of an older state stops, its results are dropped."""
        probs = self._session.predict_proba([int(index)])[0]
        order = torch.argsort(probs, descending=True, stable=True)[: self.max_classes].tolist()
        view = self._session.query_view(answers=order)
        with self._cond:
            if self._closed:
                return
            if self._last is not None and self._last[:2] == (key, index) and self._last[2] >= k:
                return  # this item in this state is speculated already (or being so)
            self._last = (key, int(index), int(k))
            self._generation += 1
            self._results = {rk: rv for rk, rv in self._results.items() if rk[0] == key}
            self._job = _Job(self._generation, key, int(index), int(k), view, tuple(int(c) for c in order))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="bayesal-speculate", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def take(self, key: Hashable, index: int, label: int) -> tuple[int, list[int]] | None:
        """``(k, picks)``: the query of ``k`` picks speculated for the answer ``label`` to item ``index`` in
        the state ``key``, or None if there is none (not speculated, or of another state). Picks being
        computed right now for that answer are waited for (they are further along than a fresh query);
        otherwise the speculation stops, so that it does not compete with the query the answer makes."""
        wanted = (key, int(index), int(label))
        with self._cond:
            self._cond.wait_for(lambda: wanted in self._results or self._inflight != wanted)
            found = self._results.get(wanted)
            if found is None:
                self.misses += 1
                self._stop()
                return None
            self.hits += 1
            return found[0], list(found[1])

    def ready(self, key: Hashable, index: int) -> list[int]:
        """The first picks speculated so far for the answers to item ``index`` in the state ``key``, the
        most probable answer first (e.g. to fetch their images ahead)."""
        with self._cond:  # results are stored in the order speculated: the most probable answer first
            return [picks[0] for (k, i, _), (_, picks) in self._results.items() if k == key and i == index and picks]

    def settle(self, key: Hashable, index: int, label: int, timeout: float | None = None) -> None:
        """Wait (up to ``timeout`` seconds) while the picks for the answer ``label`` to item ``index`` in the
        state ``key`` are being computed, so that :meth:`take` finds them (an answer calls it before it
        takes the service's lock, so that other requests are not held up by the wait)."""
        wanted = (key, int(index), int(label))
        with self._cond:
            self._cond.wait_for(lambda: self._inflight != wanted, timeout)

    def cancel(self) -> None:
        """Stop the running job between two classes and forget every result."""
        with self._cond:
            self._stop()
            self._results = {}

    def _stop(self) -> None:
        """Stop the running job between two classes, drop the waiting one (lock held)."""
        self._generation += 1
        self._job = None
        self._last = None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no job waits or runs; False if ``timeout`` seconds passed first."""
        with self._cond:
            return self._cond.wait_for(lambda: self._job is None and not self._busy, timeout)

    def close(self, timeout: float | None = None) -> None:
        """Stop speculating (a running class finishes) and wait up to ``timeout`` seconds for the thread."""
        with self._cond:
            self._closed = True
            self._generation += 1
            self._job = None
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # ------------------------------------------------------------------ the worker thread
    def _current(self, job: _Job) -> bool:
        with self._cond:
            return job.generation == self._generation and not self._closed

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._job is not None or self._closed)
                if self._closed:
                    self._thread = None
                    self._cond.notify_all()
                    return
                job, self._job, self._busy = self._job, None, True
                assert job is not None  # the wait above
            try:
                self._speculate(job)
            except Exception:  # noqa: BLE001, S110 - a failed speculation only means the answer queries itself
                pass
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _speculate(self, job: _Job) -> None:
        session = self._session
        with self._cond:  # a person reads for seconds; answers that come faster leave nothing to speculate on
            self._cond.wait_for(lambda: job.generation != self._generation or self._closed, self.start_delay)
        if not self._current(job):
            return
        for label in job.order:
            if not self._current(job):
                return
            with self._cond:
                self._inflight = (job.key, job.index, int(label))
            picks = None
            try:
                after = session.view_after_tell(job.view, job.index, int(label))
                picks = None if after is None else session.query_in(after, job.k)
            finally:
                with self._cond:
                    if picks is not None and job.generation == self._generation:
                        self._results[(job.key, job.index, int(label))] = (job.k, picks)
                    self._inflight = None
                    self._cond.notify_all()
            if picks and self._prepare is not None:
                self._prepare(picks[0])
            if picks and after is not None and label == job.order[0] and self._current(job):
                # the likeliest answer's next item: what the queries after it share, computed now (on a
                # large pool queried whole, a pass over the pool), so that its own speculation starts ahead
                session.prepare_query(after, picks[0])

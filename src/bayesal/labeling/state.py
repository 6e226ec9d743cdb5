"""The event-sourced state of a labeling session: its events, their bookkeeping and the posterior.

:class:`SessionState` is the only place where an event changes the session. :meth:`SessionState.prepare`
validates an event and computes the posterior it leads to without changing anything, and returns the
function that commits it — so the caller can log the event durably in between, and a failure at any
point (bad input, a numerical error, a failed write) leaves the state untouched. It is the session's
:class:`~bayesal.labeling.engine.EventFold`: the :class:`~bayesal.labeling.engine.LabelingEngine` logs
and snapshots it, and resumes it from the events of a :class:`RecoveryPlan` (:meth:`SessionState.absorb`,
:meth:`SessionState.start`).

**Background refits.** With ``background=True`` a new fit point (a ``retrain``, or a ``tell`` marked
``retrain: true``) is logged and committed at once with the interim posterior — the previous one plus
the action's own update — and its refit runs in a :class:`~bayesal.labeling.refit.RefitWorker`. When
it lands, the posterior becomes the refit plus the updates of the actions logged since the fit point,
which is what replaying the history gives (:meth:`PosteriorReplay.replay`), and is swapped in under
:attr:`SessionState.lock`. Only the latest fit point's refit is kept: a newer one supersedes it, an
undo of the fit point cancels it. While a refit is pending no snapshot is written (it would save the
interim posterior as if it were the replayed one), and the undo cache never holds a state derived
from a superseded refit. Logged events being replayed (a resume) always refit synchronously.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bayesal.exceptions import CorruptStateError
from bayesal.laplace import LastLayerLaplace

from .history import LabelBook, UndoCache, is_fit_point
from .recovery import RecoveryPlan
from .refit import RefitWorker
from .replay import PosteriorReplay
from .storage import FORMAT_VERSION

__all__ = ["SessionState", "PendingRefit"]


@dataclass
class PendingRefit:
    """A fit point whose refit the live posterior does not hold yet: its ``position`` in the history,
    its event's ``seq`` (which identifies it across undo and redo) and the ``labels`` it trains on."""

    position: int
    seq: int | None
    labels: dict[int, int] = field(default_factory=dict)


class SessionState:
    """Events, bookkeeping (:class:`LabelBook`), current posterior and the undo cache of a session.

    ``header`` is the session's saved configuration (it heads every snapshot); ``replay`` builds
    posteriors from the history; ``book`` starts empty; ``undo_cache`` posteriors before the last
    actions are kept for an instant undo. ``background``: refit new fit points in a worker thread
    (module docstring); ``on_refit`` is called, under :attr:`lock`, after a refit was swapped in.

    Every change of the state (an event's commit, a swap) happens under :attr:`lock`; readers may take
    :attr:`posterior` at any time (posteriors are never modified in place).
    """

    def __init__(self, header: dict[str, Any], replay: PosteriorReplay, book: LabelBook, undo_cache: int,
                 *, background: bool = False, on_refit: Callable[[], None] | None = None) -> None:
        self.header = header
        self.replay = replay
        self.book = book
        self.events: list[dict[str, Any]] = []
        self.posterior: LastLayerLaplace = replay.prior()
        self._undo: UndoCache[LastLayerLaplace] = UndoCache(undo_cache)
        self.lock = threading.RLock()
        self.pending: PendingRefit | None = None
        self.refit_error: BaseException | None = None
        self.swaps = 0  # background refits swapped in so far
        self.on_refit = on_refit
        self._worker = RefitWorker() if background else None

    @property
    def background(self) -> bool:
        """Whether new fit points refit in a worker thread (the interim posterior meanwhile)."""
        return self._worker is not None

    def _validate(self, ev: Mapping[str, Any], where: str | None) -> None:
        """:meth:`LabelBook.validate`; for a stored event being replayed (``where`` names it) a failure
        is a :class:`~bayesal.exceptions.CorruptStateError`."""
        try:
            self.book.validate(ev)
        except (ValueError, KeyError, TypeError) as err:
            if where is None:
                raise
            raise CorruptStateError(f"{where}: cannot apply event {dict(ev)}: {err}") from err

    def prepare(self, ev: Mapping[str, Any], where: str | None = None) -> Callable[[], None]:
        """Validate ``ev`` and compute the posterior it leads to; return the function that commits it.

        ``where`` names a stored event being replayed (its failure is then a corrupt state)."""
        self._validate(ev, where)
        if ev["op"] == "undo":
            cached = self._undo.peek()
            before = cached if cached is not None else self.replay.replay(self.book.history[:-1])

            def commit_undo() -> None:
                self._undo.pop()
                self.book.fold(ev)
                self.posterior = before
                self.events.append(dict(ev))
                # a replayed state holds every refit; an undone fit point needs none
                if self.pending is not None and (cached is None or self.pending.position >= len(self.book.history)):
                    self._drop_pending()

            return commit_undo
        action = self.book.redo[-1] if ev["op"] == "redo" else ev
        position = len(self.book.history)
        labels_after = self.book.labels_after(action)
        deferred = self._worker is not None and where is None and is_fit_point(action)
        after = self.replay.transition(self.posterior, action, position, labels_after, refit=not deferred)

        def commit() -> None:
            self.book.fold(ev)  # the same bookkeeping as a replayed event
            self._undo.push(self.posterior)
            self.posterior = after
            self.events.append(dict(ev))
            if deferred:
                self._schedule(PendingRefit(position, action.get("seq"), labels_after))

        return commit

    # ------------------------------------------------------------------ background refits
    def _schedule(self, job: PendingRefit) -> None:
        """Make ``job`` the pending refit (under the lock, from a commit)."""
        assert self._worker is not None
        if self.pending is not None:
            # superseded: the states after its fit point, up to the new one, will never get its refit
            self._undo.forget(self.pending.position + 1, job.position + 1)
        self.pending, self.refit_error = job, None
        self._worker.submit(lambda: self._run_refit(job))

    def _drop_pending(self) -> None:
        self.pending, self.refit_error = None, None
        if self._worker is not None:
            self._worker.cancel()

    def _run_refit(self, job: PendingRefit) -> None:
        """The worker's job: fit (outside the lock), then swap in the refit plus the later updates."""
        try:
            post = self.replay.fit(job.labels, job.position)
            with self.lock:
                if self.pending is not job:
                    return  # superseded or cancelled meanwhile
                history = self.book.history
                if job.position >= len(history) or history[job.position].get("seq") != job.seq:
                    return  # its fit point left the history (an undo drops the job first; kept as a guard)
                labels = dict(job.labels)
                for j in range(job.position + 1, len(history)):
                    self._undo.replace(j, post)  # the state before action j, as replay gives it
                    LabelBook.set_label(labels, history[j])
                    post = self.replay.transition(post, history[j], j, labels)
                self.posterior = post
                self.pending = None
                self.swaps += 1
                if self.on_refit is not None:
                    self.on_refit()
        except Exception as err:  # noqa: BLE001 - kept for wait_refit(); the live posterior stays the interim one
            with self.lock:
                if self.pending is job:
                    self.refit_error = err

    def wait_refit(self, timeout: float | None = None) -> bool:
        """Wait until the pending refit (if any) is swapped in; False if ``timeout`` seconds passed
        first. Raises the error the refit failed with (the posterior then stays the interim one)."""
        if self._worker is not None and not self._worker.wait(timeout):
            return False
        with self.lock:
            if self.refit_error is not None:
                raise self.refit_error
            return self.pending is None

    def close(self) -> None:
        """Stop the refit worker (a running refit finishes; a waiting one is dropped)."""
        if self._worker is not None:
            self._worker.close()

    def absorb(self, ev: Mapping[str, Any], where: str) -> None:
        """Fold a stored event into the bookkeeping only (the snapshot's posterior holds it)."""
        self._validate(ev, where)
        self.book.fold(ev)
        self.events.append(dict(ev))

    def start(self, plan: RecoveryPlan | None) -> None:
        """After the absorbed events: the posterior of ``plan``'s snapshot (checked against them), or
        without one (``None``) the replay of the history; the undo cache starts empty."""
        self.posterior = self.replay.replay(self.book.history) if plan is None else self._snapshot_posterior(plan)
        self._undo.reset(len(self.book.history))

    def _snapshot_posterior(self, plan: RecoveryPlan) -> LastLayerLaplace:
        """The snapshot's posterior, after checking the snapshot against the events just folded."""
        snap = plan.snapshot or {}
        if (snap.get("labels", self.book.labels) != self.book.labels
                or set(snap.get("skipped", self.book.skipped)) != self.book.skipped):
            raise CorruptStateError("the state file is corrupt: its labels disagree with its events; use Session.recover()")
        try:
            # the header's step size wins (snapshots written before it was saved with the posterior)
            post = LastLayerLaplace.from_state_dict(plan.posterior_state or {}).with_update_options(
                gamma=self.replay.gamma)
        except (ValueError, KeyError, TypeError) as err:
            raise CorruptStateError(f"the state file is corrupt: {err}; use Session.recover()") from err
        if (post.num_classes, post.num_features) != (self.replay.num_classes, self.replay.x.shape[1]):
            raise CorruptStateError("the state file is corrupt: its posterior's shape does not match the header; "
                                    "use Session.recover()")
        return post

    def snapshot_state(self) -> dict[str, Any] | None:
        """The snapshot of this state (header, events, derived labels, RNG state, posterior); ``None``
        while a refit is pending (the live posterior is not yet the one the events replay to)."""
        if self.pending is not None:
            return None
        return {
            "format": FORMAT_VERSION,
            "header": self.header,
            "events": list(self.events),
            # derived from the events; stored for readers and cross-checked on resume
            "labels": dict(self.book.labels),
            "skipped": sorted(self.book.skipped),
            "rng": {"seed": self.replay.seed, "n_events": len(self.events)},
            "posterior": self.posterior.state_dict(),
        }

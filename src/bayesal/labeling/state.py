"""The event-sourced state of a labeling session: its events, their bookkeeping and the posterior.

:class:`SessionState` is the only place where an event changes the session. :meth:`SessionState.prepare`
validates an event and computes the posterior it leads to without changing anything, and returns the
function that commits it — so the caller can log the event durably in between, and a failure at any
point (bad input, a numerical error, a failed write) leaves the state untouched. It is the session's
:class:`~bayesal.labeling.engine.EventFold`: the :class:`~bayesal.labeling.engine.LabelingEngine` logs
and snapshots it, and resumes it from the events of a :class:`RecoveryPlan` (:meth:`SessionState.absorb`,
:meth:`SessionState.start`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from bayesal.exceptions import CorruptStateError
from bayesal.laplace import LastLayerLaplace

from .history import LabelBook, UndoCache
from .recovery import RecoveryPlan
from .replay import PosteriorReplay
from .storage import FORMAT_VERSION

__all__ = ["SessionState"]


class SessionState:
    """Events, bookkeeping (:class:`LabelBook`), current posterior and the undo cache of a session.

    ``header`` is the session's saved configuration (it heads every snapshot); ``replay`` builds
    posteriors from the history; ``book`` starts empty; ``undo_cache`` posteriors before the last
    actions are kept for an instant undo.
    """

    def __init__(self, header: dict[str, Any], replay: PosteriorReplay, book: LabelBook, undo_cache: int) -> None:
        self.header = header
        self.replay = replay
        self.book = book
        self.events: list[dict[str, Any]] = []
        self.posterior: LastLayerLaplace = replay.prior()
        self._undo: UndoCache[LastLayerLaplace] = UndoCache(undo_cache)

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

            return commit_undo
        action = self.book.redo[-1] if ev["op"] == "redo" else ev
        after = self.replay.transition(self.posterior, action, len(self.book.history), self.book.labels_after(action))

        def commit() -> None:
            self.book.fold(ev)  # the same bookkeeping as a replayed event
            self._undo.push(self.posterior)
            self.posterior = after
            self.events.append(dict(ev))

        return commit

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

    def snapshot_state(self) -> dict[str, Any]:
        """The snapshot of this state (header, events, derived labels, RNG state, posterior)."""
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

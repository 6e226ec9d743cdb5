"""The labeling engine: a directory's event log, lock and snapshots, and the fold of its events into a
Laplace posterior — one engine for :class:`~bayesal.labeling.session.Session` and for the Label Studio
backend's projects.

What an event *means* belongs to its user (a session's tell/skip/correct/retrain/undo/redo, a Label
Studio project's config/annotation/delete/train); everything else is here, once:

* :func:`resolve_seed` and :func:`log_header`: the seed of a new log (drawn when not given, saved
  either way) and its first line;
* :class:`PosteriorFold`: the posterior arithmetic events reduce to — the zero-weight prior
  ``N(0, λ₀⁻¹ I)``, head refits seeded by ``(seed, tag, position)``, one-point Bayesian updates and
  label corrections — so that the same events give the same posterior whoever folds them;
* :class:`EventFold`: what the engine asks of the code that gives events their meaning;
* :class:`LabelingEngine`: the single write path of an event (validate and compute, log durably,
  commit, snapshot when due) and the resume of logged events (the events a snapshot already holds
  are bookkeeping only, the fold starts from the snapshot's posterior, the later ones are applied).

The directory itself (lock, log, snapshot writer) is a :class:`~bayesal.labeling.store.SessionStore`
with the user's file names (:class:`~bayesal.labeling.store.LogFiles`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from bayesal.exceptions import InvalidInputError
from bayesal.laplace import LastLayerLaplace
from bayesal.utils import derive_seed

from .storage import FORMAT_VERSION, read_log
from .store import SessionStore

__all__ = ["resolve_seed", "log_header", "logged_records", "PosteriorFold", "EventFold", "LabelingEngine"]


def resolve_seed(random_state: int | None) -> int:
    """``random_state`` as an int, or a fresh random 32-bit seed for ``None``.

    Raises :class:`~bayesal.exceptions.InvalidInputError` for anything but an int or None."""
    if random_state is None:
        return int.from_bytes(os.urandom(4), "little")
    if isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer)):
        raise InvalidInputError(f"random_state must be an int or None, got {random_state!r}")
    return int(random_state)


def log_header(seed: int, *, format: int = FORMAT_VERSION, **fields: Any) -> dict[str, Any]:
    """The first line of a new event log: ``op``, ``seq`` 0, ``format``, ``created`` (Unix time),
    ``seed`` and the user's ``fields`` (its id, its settings)."""
    return {"op": "header", "seq": 0, "format": int(format), "created": round(time.time(), 3),
            "seed": int(seed), **fields}


def logged_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The intact records of the event log ``path``, header first (read without locking it; a torn or
    damaged tail is left out)."""
    return read_log(path).records


class PosteriorFold:
    """The posteriors a labeling history passes through, all built with the same settings. Posteriors are
    never modified in place, so a caller may keep earlier ones.

    Parameters
    ----------
    settings : mapping
        Keyword arguments of :class:`LastLayerLaplace` (``prior_precision``, ``curvature``, ``gamma``,
        ``steps``, ``head_config``, ...), shared by the prior and every refit.
    seed : int
        The log's seed; a refit at ``position`` is seeded by ``derive_seed(seed, tag, position)``.
    tag : str
        Names the refits' random stream (a saved log's refits keep the tag they were made with).
    """

    def __init__(self, settings: Mapping[str, Any], *, seed: int, tag: str) -> None:
        self.settings = dict(settings)
        self.seed = int(seed)
        self.tag = tag
        self._priors: dict[tuple[int, int], LastLayerLaplace] = {}

    def prior(self, num_classes: int, num_features: int) -> LastLayerLaplace:
        """The prior ``N(M₀, λ₀⁻¹ I)`` over ``(C, D)`` weights (no data), ``M₀`` the settings' ``prior_mean``
        (zero without one); shared per shape."""
        key = (int(num_classes), int(num_features))
        if key not in self._priors:
            c, d = key
            mean = self.settings.get("prior_mean")
            self._priors[key] = LastLayerLaplace(**self.settings).fit(
                torch.zeros(0, d, dtype=torch.float64), torch.zeros(0, dtype=torch.long),
                weight=torch.zeros(c, d, dtype=torch.float64) if mean is None else mean, num_classes=c,
            )
        return self._priors[key]

    def fit(self, x: torch.Tensor, y: torch.Tensor, num_classes: int, position: int) -> LastLayerLaplace:
        """The head trained from scratch on ``x (n, D)`` with labels ``y`` (``(n,)`` class indices or
        ``(n, C)`` soft labels), seeded by ``position``, and its Laplace posterior."""
        post = LastLayerLaplace(**self.settings, random_state=derive_seed(self.seed, self.tag, position))
        return post.fit(x, y, num_classes=num_classes)

    @staticmethod
    def update(post: LastLayerLaplace, x: torch.Tensor, y: torch.Tensor) -> LastLayerLaplace:
        """``post`` after the Bayesian update with the points ``x (n, D)`` and labels ``y``."""
        return post.update(x, y)

    @staticmethod
    def relabel(post: LastLayerLaplace, x: torch.Tensor, old: int, new: int) -> LastLayerLaplace:
        """``post`` after the label of an absorbed point ``x (D,)`` changed from ``old`` to ``new``."""
        return post.relabel(x, old, new)


class EventFold(Protocol):
    """What a :class:`LabelingEngine` folds events with: the user's bookkeeping and posterior.

    ``where`` names a logged event being replayed (for error messages; ``None`` for a new one)."""

    def prepare(self, event: Mapping[str, Any], where: str | None = None) -> Callable[[], None]:
        """Validate ``event`` and compute what it leads to, changing nothing; return the commit."""
        ...

    def absorb(self, event: Mapping[str, Any], where: str) -> None:
        """Fold a logged event into the bookkeeping only (a snapshot holds its posterior)."""
        ...

    def start(self, saved: Any | None) -> None:
        """Set the posterior after the absorbed events: from the saved state a snapshot gave, or
        (``None``) the one the events give."""
        ...

    def snapshot_state(self) -> dict[str, Any] | None:
        """The snapshot to write now (``None``: nothing worth writing yet)."""
        ...


class LabelingEngine:
    """One event-sourced labeling state: an :class:`EventFold` and, unless it is kept in memory only,
    the :class:`~bayesal.labeling.store.SessionStore` of its directory.

    The engine numbers events (``seq`` 1, 2, …) and runs each through the one write path
    (:meth:`record`); :meth:`resume` folds the events of a reopened log.
    """

    def __init__(self, fold: EventFold, store: SessionStore | None = None) -> None:
        self.fold = fold
        self.store = store
        self.n_events = 0

    def record(self, event: dict[str, Any]) -> None:
        """Number ``event``, compute it, write it durably, then commit it and snapshot when due.

        A failure at any step before the write leaves everything as it was; a failed write raises
        :class:`~bayesal.exceptions.StorageError` and nothing is committed."""
        event["seq"] = self.n_events + 1
        if self.store is not None:
            self.store.check_writable()
        commit = self.fold.prepare(event)  # may raise: nothing has changed yet
        if self.store is not None:
            self.store.append(event)  # durable before the caller hears back
        commit()
        self.n_events = int(event["seq"])
        if self.store is not None:
            self.store.committed(self.fold.snapshot_state)

    def resume(self, events: Sequence[Mapping[str, Any]], *, cached: int = 0, saved: Any | None = None,
               where: Callable[[int], str] = lambda k: f"event {k + 1}") -> None:
        """Fold logged ``events``. ``saved``: the state a snapshot holds after the first ``cached``
        events (``None``, or one past the events: fold them all and rebuild the posterior);
        ``where(k)`` names event ``k`` (0-based) in error messages."""
        if saved is None or cached > len(events):
            saved, cached = None, len(events)
        for k in range(cached):
            self.fold.absorb(events[k], where(k))
        self.fold.start(saved)
        for k in range(cached, len(events)):
            self.fold.prepare(events[k], where(k))()
        self.n_events = len(events)

    def snapshot(self, *, sync: bool) -> None:
        """Write the fold's snapshot now (``sync``) or in the background; nothing if it has none."""
        if self.store is not None and self.store.is_open:
            state = self.fold.snapshot_state()
            if state is not None:
                self.store.snapshot(state, sync=sync)

    def snapshot_if_due(self) -> None:
        """Write the fold's snapshot in the background if one is due but was skipped (the fold had
        nothing to write when its events were committed)."""
        if self.store is not None and self.store.is_open and self.store.snapshot_due:
            self.snapshot(sync=False)

    @property
    def is_open(self) -> bool:
        """True while events can be recorded to the directory."""
        return self.store is not None and self.store.is_open

    def close(self, *, snapshot: bool = True) -> None:
        """Write the final snapshot (unless ``snapshot`` is off), stop the writer thread and release
        the directory (idempotent)."""
        if not self.is_open or self.store is None:
            return
        try:
            if snapshot:
                self.snapshot(sync=True)
        finally:
            self.store.close()

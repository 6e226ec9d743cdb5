"""The read-only face of a labeling :class:`~bayesal.labeling.session.Session`: what it holds.

:class:`SessionViews` declares the attributes the session's parts share (set by
``Session._setup``) and reads them: the pool, the labels and history, the posterior, the settings.
Every view returns a copy or an immutable value, so a caller cannot change the session behind its
event log.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bayesal.laplace import LastLayerLaplace, PosteriorOptions
from bayesal.strategies import QueryStrategy

from .engine import LabelingEngine
from .history import LabelBook
from .policy import RefitPolicy
from .replay import PosteriorReplay
from .signals import StoppingSignals
from .state import SessionState
from .store import StorageOptions

__all__ = ["SessionViews"]


class SessionViews:
    """Read-only properties of a session (a part of :class:`~bayesal.labeling.session.Session`)."""

    # The session's state, set once by Session._setup (the state directory also by opening it).
    _header: dict[str, Any]
    _x: torch.Tensor
    items: Sequence[Any] | np.ndarray | None
    _strategy: QueryStrategy
    _names: list[str]
    _seed: int
    _candidate_size: int | None
    _options: StorageOptions
    _replay: PosteriorReplay
    _book: LabelBook
    _policy: RefitPolicy
    _state: SessionState
    _signals: StoppingSignals
    _state_dir: Path | None
    _engine: LabelingEngine
    recovery_notes: list[str]

    @property
    def state_dir(self) -> Path | None:
        """The session's directory (None for an in-memory session)."""
        return self._state_dir

    @property
    def storage(self) -> StorageOptions:
        """How the state is kept."""
        return self._options

    @property
    def posterior(self) -> LastLayerLaplace:
        """The current posterior (do not modify it in place)."""
        return self._state.posterior

    @property
    def class_names(self) -> list[str]:
        """The ``C`` class names."""
        return list(self._names)

    @property
    def num_classes(self) -> int:
        """``C``."""
        return len(self._names)

    @property
    def features(self) -> torch.Tensor:
        """Pool features ``(N, D)`` float64."""
        return self._x

    @property
    def labels(self) -> dict[int, int]:
        """``{pool index: class index}`` of the current labels (in labeling order)."""
        return dict(self._book.labels)

    @property
    def named_labels(self) -> dict[int, str]:
        """``{pool index: class name}`` of the current labels."""
        return {i: self._names[c] for i, c in self._book.labels.items()}

    @property
    def skipped(self) -> set[int]:
        """Skipped pool indices."""
        return set(self._book.skipped)

    @property
    def n_labeled(self) -> int:
        """Number of labeled instances."""
        return len(self._book.labels)

    @property
    def history(self) -> list[dict[str, Any]]:
        """Effective actions (after undo/redo), oldest first."""
        return [dict(a) for a in self._book.history]

    @property
    def events(self) -> list[dict[str, Any]]:
        """All logged events (including undo/redo), oldest first."""
        return [dict(e) for e in self._state.events]

    @property
    def can_undo(self) -> bool:
        """True if there is an action to undo."""
        return bool(self._book.history)

    @property
    def can_redo(self) -> bool:
        """True if there is an undone action to redo."""
        return bool(self._book.redo)

    def replay(self, history: Sequence[Mapping[str, Any]] | None = None) -> LastLayerLaplace:
        """The posterior an action history replays to (synchronously; the current history if None):
        the refit at its last fit point plus the updates after it — what a resume gives.

        Parameters
        ----------
        history : sequence of dict, optional
            Effective actions as in :attr:`history`.

        Returns
        -------
        LastLayerLaplace
        """
        return self._replay.replay(self.history if history is None else [dict(a) for a in history])

    @property
    def refit_policy(self) -> RefitPolicy:
        """When the head is refit (the saved ``retrain_every`` and ``reselect``)."""
        return self._policy

    @property
    def options(self) -> PosteriorOptions:
        """The posterior's settings (as saved in the header)."""
        return self._replay.options

    @property
    def config(self) -> dict[str, Any]:
        """The saved configuration (the log header)."""
        return copy.deepcopy(self._header)

    @property
    def seed(self) -> int:
        """The session's seed."""
        return self._seed

    @property
    def refit_pending(self) -> bool:
        """True while a background refit has not been swapped in yet."""
        return self._state.pending is not None

    @property
    def refits_swapped(self) -> int:
        """How many background refits were swapped in since the session was opened (the posterior
        changed without an action: caches of what it gives are stale)."""
        return self._state.swaps

    def __repr__(self) -> str:
        where = f", state_dir={str(self._state_dir)!r}" if self._state_dir is not None else ""
        return (
            f"Session(N={self._x.shape[0]}, D={self._x.shape[1]}, C={len(self._names)}, "
            f"labeled={len(self._book.labels)}, skipped={len(self._book.skipped)}, "
            f"strategy={self._header['strategy']['name']!r}{where})"
        )

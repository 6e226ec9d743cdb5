"""What a labeling :class:`~bayesal.labeling.session.Session` asks and predicts: the next instances to
label, the predictive, the stopping signals. Nothing here writes an event.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bayesal.exceptions import InvalidInputError
from bayesal.laplace import LastLayerLaplace
from bayesal.strategies import LabeledSet, QueryStrategy, RandomSampling, TypiClust, select
from bayesal.utils import derive_seed

from .moments import Moments, PoolMoments, uses_pool_moments
from .views import SessionViews

__all__ = ["SessionQueries", "QueryView"]


@dataclass(frozen=True)
class QueryView:
    """What a query reads of a session's state: the ``posterior``, the ``labels`` (pool index → class),
    the ``skipped`` indices and the number of events so far (``n_events``, which seeds the query);
    ``fit_points``: for the answers asked about when it was taken, whether telling one is a fit point
    of the refit policy."""

    posterior: LastLayerLaplace
    labels: Mapping[int, int]
    skipped: frozenset[int]
    n_events: int
    fit_points: Mapping[int, bool] = field(default_factory=dict)
    #: names the state for the pool moments of a whole-pool query over a large pool (:mod:`.moments`);
    #: ``lineage``: how it follows from the state before (``("tell", parent key, index, label)``,
    #: ``("skip", parent key)``) or None (its moments are built from the posterior)
    key: Hashable = None
    lineage: tuple[Any, ...] | None = None

# Candidates clustered per covering query: k-means over more would cost more than the key-to-next budget
_COVER_CANDIDATES = 300
# Covering ends after this many labels per class even if a class is still missing: a class that rare is
# found sooner by the strategy's uncertainty than by typical items (and k-means grows with the labels)
_COVER_LABELS_PER_CLASS = 5


class SessionQueries(SessionViews):
    """Queries of a session (a part of :class:`~bayesal.labeling.session.Session`)."""

    def available_indices(self) -> np.ndarray:
        """Sorted pool indices that are neither labeled nor skipped.

        Returns
        -------
        ndarray of shape (n,)
        """
        mask = np.ones(self._x.shape[0], dtype=bool)
        if self._book.labels:
            mask[np.fromiter(self._book.labels.keys(), dtype=np.int64)] = False
        if self._book.skipped:
            mask[np.fromiter(self._book.skipped, dtype=np.int64)] = False
        return np.flatnonzero(mask)

    @property
    def cold_start(self) -> bool:
        """True while fewer than 2 classes have been labeled: queries are then random."""
        return len(set(self._book.labels.values())) < 2

    @property
    def covering(self) -> bool:
        """True while a ``cold_start="cover"`` session has a class without a label (and fewer than 5
        labels per class): queries then pick typical, diverse items (TypiClust) instead of the strategy's."""
        return self._covering(self._book.labels)

    def _covering(self, labels: Mapping[int, int]) -> bool:
        """:attr:`covering` for the labels ``labels`` (the session's, or those of a :class:`QueryView`)."""
        n_classes = len(self._names)
        return (self._header.get("cold_start") == "cover" and len(labels) < _COVER_LABELS_PER_CLASS * n_classes
                and len(set(labels.values())) < n_classes)

    def query(self, k: int = 1) -> list[int]:
        """Pool indices to label next.

        Typical, diverse items while :attr:`covering`; random while :attr:`cold_start`; else the
        strategy scores a random subset of ``candidate_size``
        unlabeled, unskipped instances under the current posterior (the selection step of the
        experiment loop, :func:`bayesal.strategies.select`). Deterministic given the seed and the
        events so far.

        Parameters
        ----------
        k : int, default 1
            How many instances.

        Returns
        -------
        list of int
            ``k`` pool indices (fewer if the pool is nearly exhausted; ``[]`` when done).
        """
        return self.query_in(self.query_view(), k)

    def query_view(self, answers: Iterable[int] = ()) -> QueryView:
        """What :meth:`query` reads of the session now, taken consistently (a background refit swaps
        the posterior under the same lock), with whether telling each class of ``answers`` would be a fit
        point (so that :meth:`view_after_tell` needs nothing of the live session for them)."""
        with self._state.lock:
            due = {int(c): self._policy.due(self._book, self._book.check_label(int(c))) for c in answers}
            post = self._state.posterior
            # an update's downdate left pending is applied now: an update computed from the view then
            # starts from the state that tell() will start from (a query reads it, as this does), to the bit
            post.covariance  # noqa: B018 - read for its side effect
            key, lineage = self._live_moments_key()
            return QueryView(post, dict(self._book.labels), frozenset(self._book.skipped),
                             len(self._state.events), due, key, lineage)

    def _live_moments_key(self) -> tuple[Hashable, tuple[Any, ...] | None]:
        """The pool-moments key of the session's state now and how it follows from the state seen at the
        previous call (state lock held): a tell that only updates the posterior steps its moments, a skip
        keeps them, anything else (a refit swapped in, an undo, a correction, a state not seen) rebuilds."""
        events, swaps = self._state.events, self._state.swaps
        n = len(events)
        prev = self.__dict__.get("_moments_live")
        if prev is not None and prev[0] == n and prev[1][1] == swaps:
            return prev[1], prev[2]
        lineage: tuple[Any, ...] | None = None
        key: Hashable = (n, swaps, "rebuilt")
        if prev is not None and prev[0] == n - 1 and prev[1][1] == swaps:
            ev = events[-1]
            inline_refit = bool(ev.get("retrain")) and not self._state.background
            if ev["op"] == "tell" and not inline_refit:
                key = (n, swaps, "tell", int(ev["index"]), int(ev["label"]))
                lineage = ("tell", prev[1], int(ev["index"]), int(ev["label"]))
            elif ev["op"] == "skip":
                key, lineage = (n, swaps, "skip", int(ev["index"])), ("skip", prev[1])
        self.__dict__["_moments_live"] = (n, key, lineage)
        return key, lineage

    def _pool_moments(self) -> PoolMoments:
        """The pool moments of this session's states (made on first use; a reopened state gets its own)."""
        with self._state.lock:
            pm = self.__dict__.get("_moments")
            if pm is None or pm[0] is not self._state:
                pm = (self._state, PoolMoments(self._x))
                self.__dict__["_moments"] = pm
            return pm[1]

    def _moments_of(self, view: QueryView) -> Moments:
        """The pool moments of the state ``view`` (see :mod:`.moments`)."""
        pm = self._pool_moments()
        lineage = view.lineage
        parent = None if lineage is None else pm.lookup(lineage[1])
        if view.key is None or lineage is None or parent is None:
            return pm.rebuilt(object() if view.key is None else view.key, view.posterior)  # object(): a view of no key
        # a pure update moves the posterior by one point; a fit (the first one, a fit point) does not
        moved = getattr(view.posterior, "n_updates_", None), getattr(parent.posterior, "n_updates_", None)
        if lineage[0] == "skip":
            if moved[0] != moved[1] or moved[0] is None:
                return pm.rebuilt(view.key, view.posterior)
            return pm.same(view.key, parent, view.posterior)
        if moved[0] is None or moved[1] is None or moved[0] != moved[1] + 1:
            return pm.rebuilt(view.key, view.posterior)
        told = int(lineage[2])
        return pm.stepped(view.key, lineage[1], parent, told, int(lineage[3]), view.posterior,
                          labeled=sorted(i for i in view.labels if i != told))

    def view_after_tell(self, view: QueryView, index: int, label: int) -> QueryView | None:
        """The view that :meth:`tell` ``(index, label)`` on the state ``view`` leads to, without recording
        anything: the posterior updated with the point (what ``tell`` computes, the same call on the same
        operands). ``None`` where that ``tell`` would refit the head inside the call (a fit point without
        background refits): too costly to compute for an answer that may not come. For a ``label`` that
        ``view`` was not taken with (see :meth:`query_view`), the session must still be in the state of
        ``view``: whether the tell is a fit point is then read from it."""
        if index in view.labels:
            return None
        action = {"op": "tell", "index": int(index), "label": int(label)}
        deferred = self._state.background
        due = view.fit_points.get(int(label))
        if due is None:
            due = self._policy.due(self._book, int(label))
        if due:
            if not deferred:
                return None
            action["retrain"] = True
        labels = {**view.labels, int(index): int(label)}
        post = self._replay.transition(view.posterior, action, len(self._book.history), labels, refit=False)
        key, lineage = None, None
        if view.key is not None:  # the key the live state gets after this tell (see _live_moments_key)
            key = (view.n_events + 1, view.key[1], "tell", int(index), int(label))  # type: ignore[index]
            lineage = ("tell", view.key, int(index), int(label))
        return QueryView(post, labels, view.skipped - {int(index)}, view.n_events + 1, key=key, lineage=lineage)

    def prepare_query(self, view: QueryView, index: int) -> None:
        """Ahead of showing item ``index`` in the state ``view``: compute what the next queries after any
        answer to it share (for a whole-pool query over a large pool, the pool's products with the item's
        ``Σφ`` and ``φ``; otherwise nothing). Read only; the picks are unchanged."""
        if (view.key is None or self._covering(view.labels) or len(set(view.labels.values())) < 2
                or not uses_pool_moments(self._strategy, view.posterior, int(self._x.shape[0]), self._candidate_size)):
            return
        pm = self._pool_moments()
        if pm.lookup(view.key) is not None:  # the state's own moments are there: its answers will step them
            pm.product(view.key, view.posterior, int(index))

    def query_in(self, view: QueryView, k: int = 1) -> list[int]:
        """:meth:`query` on the state ``view`` (the current one, or one :meth:`view_after_tell` gives):
        the same picks as :meth:`query` once the session is in that state."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidInputError(f"k must be a positive integer, got {k!r}")
        mask = np.ones(self._x.shape[0], dtype=bool)
        if view.labels:
            mask[np.fromiter(view.labels.keys(), dtype=np.int64)] = False
        if view.skipped:
            mask[np.fromiter(view.skipped, dtype=np.int64)] = False
        avail = np.flatnonzero(mask)
        if avail.size == 0:
            return []
        k = min(int(k), int(avail.size))
        gen = torch.Generator().manual_seed(derive_seed(self._seed, "query", view.n_events))
        available = torch.zeros(self._x.shape[0], dtype=torch.bool)
        available[torch.from_numpy(avail)] = True
        lab_idx = sorted(view.labels)
        labeled = LabeledSet(
            features=self._x[lab_idx], labels=torch.tensor([view.labels[i] for i in lab_idx], dtype=torch.long)
        )
        strategy: QueryStrategy
        candidate_size: int | None
        if self._covering(view.labels):  # typical items of uncovered clusters: every class gets a label soon
            strategy, candidate_size = TypiClust(n_iter=10), min(self._candidate_size or _COVER_CANDIDATES, _COVER_CANDIDATES)
        elif len(set(view.labels.values())) < 2:  # the cold start: uniformly among all available instances
            strategy, candidate_size = RandomSampling(), None
        else:
            strategy, candidate_size = self._strategy, self._candidate_size
            if uses_pool_moments(strategy, view.posterior, int(self._x.shape[0]), candidate_size):
                # every row of a large pool: from the moments kept current by rank-1 steps (.moments)
                return PoolMoments.top(strategy, self._moments_of(view), avail, k, gen)  # type: ignore[arg-type]
        picks = select(strategy, view.posterior.copy(), self._x, available, labeled, k, gen,
                       candidate_size=candidate_size)
        return [int(i) for i in picks]

    def predict_proba(self, indices: Iterable[int] | None = None) -> torch.Tensor:
        """Mean-field predictive of the current posterior.

        Parameters
        ----------
        indices : iterable of int, optional
            Pool positions (all ``N`` if None).

        Returns
        -------
        Tensor of shape (n, C)
        """
        if indices is None:
            return self._state.posterior.predict_proba(self._x)
        idx = [self._book.check_index(i) for i in indices]
        return self._state.posterior.predict_proba(self._x[idx])

    def stopping_signals(self, window: int = 10, reference_size: int = 2000) -> dict[str, Any]:
        """Signals that tell whether more labels are worth it (see :mod:`bayesal.labeling.signals`).

        Measured on a fixed random reference subset of the pool and compared with earlier calls (an
        in-memory trace; after a resume the point ``window`` labels back is replayed).

        Parameters
        ----------
        window : int, default 10
            Labels spanned by the comparison.
        reference_size : int, default 2000
            Size of the reference subset (fixed at the first call).

        Returns
        -------
        dict
            ``n_labels``, ``expected_accuracy``, ``gain_per_label``, ``flips``, ``flip_rate``,
            ``window_labels``, ``reference_size``.
        """
        return self._signals.measure(self._state.posterior, self._book.history, self._replay.replay,
                                     window=window, reference_size=reference_size)

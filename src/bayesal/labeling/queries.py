"""What a labeling :class:`~bayesal.labeling.session.Session` asks and predicts: the next instances to
label (with the audit stream's random picks), the predictive, the stopping signals and the estimate of
the accuracy with the stop recommendation. Nothing here writes an event.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from bayesal.exceptions import InvalidInputError
from bayesal.laplace import LastLayerLaplace, leave_one_out
from bayesal.strategies import LabeledSet, QueryStrategy, RandomSampling, TypiClust, select
from bayesal.utils import derive_seed

from .moments import Moments, PoolMoments, uses_pool_moments
from .signals import (
    DEFAULT_LEVEL,
    GAIN_HORIZON,
    GAIN_WINDOW,
    accuracy_interval,
    stop_recommended,
)
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
# The accuracy estimate reads at most this many unlabeled items (a seeded random subset beyond)
_ESTIMATE_POOL = 50_000


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
        audit = self._audit_pick_in(view.n_events, avail)
        if audit is not None:  # the audit pick comes first; the strategy picks the rest among the others
            if k == 1:
                return [audit]
            avail = avail[avail != audit]
            k -= 1
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
        return ([] if audit is None else [audit]) + [int(i) for i in picks]

    # ------------------------------------------------------------------ the audit stream
    @property
    def audit_rate(self) -> float:
        """The probability that a query is an audit pick (saved; 0 without an audit stream)."""
        return float(self._header.get("audit_rate", 0.0))

    def audit_pick(self) -> int | None:
        """The pool index the audit stream asks about in the current state (the first pick of
        :meth:`query`), or None when this query is not an audit query."""
        return self._audit_pick_in(len(self._state.events), self.available_indices())

    def _audit_pick_in(self, n_events: int, avail: np.ndarray) -> int | None:
        """The audit pick among the sorted available indices ``avail`` after ``n_events`` events: drawn
        with probability :attr:`audit_rate`, uniformly, from a generator seeded by the events so far (a
        resumed or replayed session asks the same)."""
        rate = self.audit_rate
        if rate <= 0.0 or avail.size == 0:
            return None
        gen = torch.Generator().manual_seed(derive_seed(self._seed, "audit", n_events))
        if float(torch.rand(1, generator=gen, dtype=torch.float64)) >= rate:
            return None
        return int(avail[int(torch.randint(int(avail.size), (1,), generator=gen))])

    def _mark_audit(self, ev: dict[str, Any]) -> None:
        """Mark the tell ``ev`` as an audit label if it answers the current audit pick, with the model's
        prediction for the item before its label is absorbed (out of sample)."""
        i = int(ev["index"])
        if self.audit_rate <= 0.0 or self.audit_pick() != i:
            return
        with self._state.lock:
            probs = self._state.posterior.predict_proba(self._x[i : i + 1])[0]
        ev["audit"] = True
        ev["audit_pred"] = int(probs.argmax())
        ev["audit_p"] = float(probs.max())

    def audit_labels(self) -> list[dict[str, Any]]:
        """The audit labels of the current history, oldest first.

        Returns
        -------
        list of dict
            ``index``, ``label`` (the current one: a correction replaces the answer), ``predicted`` (the
            class predicted before the label was absorbed) and ``confidence`` (its probability).
        """
        labels = self._book.labels
        return [{"index": int(a["index"]), "label": labels[int(a["index"])], "predicted": int(a["audit_pred"]),
                 "confidence": float(a["audit_p"])}
                for a in self._book.history if a["op"] == "tell" and a.get("audit") and int(a["index"]) in labels]

    # ------------------------------------------------------------------ the estimate and the stop
    @property
    def stop_when_gain_below(self) -> float | None:
        """:meth:`estimate` recommends stopping once the expected gain of the next 50 labels (at most the
        share of the predictions they change) is below this (None: never)."""
        return self._stop_gain

    @stop_when_gain_below.setter
    def stop_when_gain_below(self, value: float | None) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float, np.floating))
                                  or not math.isfinite(value) or value < 0):
            raise InvalidInputError(f"stop_when_gain_below must be a number >= 0 or None, got {value!r}")
        self._stop_gain = None if value is None else float(value)

    def _audit_rectifiers(self, post: LastLayerLaplace, audits: list[dict[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Whether two out-of-sample predictions of each audit label are right ``(n, 2)``, and their
        confidences ``(n, 2)``: the one logged when the label was given (the model of that time) and the
        current model's without the label (its leave-one-out predictive, a downdate).

        Either alone can be off: the logged one is exactly out of sample but its model's miscalibration
        drifts as labels accumulate (alone: 60 % coverage on animals with margin sampling, in the runs
        that chose the hull); the leave-one-out
        one follows the current model but its mean is a one-step approximation, too pessimistic on
        Rotten Tomatoes (73 %). The hull of their intervals is the estimate's (``docs/benchmarks.md``)."""
        if len(audits) < 2:
            return torch.zeros(0, 2, dtype=torch.float64), torch.zeros(0, 2, dtype=torch.float64)
        idx = [a["index"] for a in audits]
        y = torch.tensor([a["label"] for a in audits], dtype=torch.long)
        conf, pred = leave_one_out(post, self._x[idx], y).probs.max(1)
        logged = torch.tensor([float(a["predicted"] == a["label"]) for a in audits], dtype=torch.float64)
        logged_conf = torch.tensor([a["confidence"] for a in audits], dtype=torch.float64)
        return (torch.stack([(pred == y).to(torch.float64), logged], 1),
                torch.stack([conf.to(torch.float64), logged_conf], 1))

    def estimate(self, *, level: float = DEFAULT_LEVEL) -> dict[str, Any]:
        """The model's accuracy on the unlabeled pool with an interval, the gain per label and whether
        to stop (see :mod:`bayesal.labeling.signals` for the formulas).

        With at least 2 audit labels the interval is prediction-powered (honest): the hull of the
        intervals from two out-of-sample predictions of the audit labels (the one logged when each was
        given and the current model's leave-one-out one), the estimate their mean; without, the model's own
        (``method="model"``), which is not honest after uncertainty sampling.

        Parameters
        ----------
        level : float, default 0.9
            The interval's nominal coverage.

        Returns
        -------
        dict
            ``n_labels``, ``n_audit`` (audit labels used), ``audit_rate``, ``accuracy``, ``low``,
            ``high``, ``level``, ``method`` (``"audit"`` or ``"model"``), ``model_accuracy`` (the model's
            own estimate), ``pool_size`` (unlabeled items), ``gain_per_label`` (the accuracy gained per
            label over the last half of the labels, as the current model sees it), ``change_per_label``
            (the share of the predictions changed per label over the same labels), ``expected_gain``
            (of the next ``horizon`` = 50 labels, at most: ``change_per_label`` × 50), ``gain_window``
            (the labels those are measured over; before the first 50 labels, when they are NaN, 50),
            ``stop_threshold`` and ``stop`` (True: the expected gain is below the threshold).
        """
        with self._state.lock:
            post, history = self._state.posterior, list(self._book.history)
            labels = dict(self._book.labels)
            audits = self.audit_labels()
        unlabeled = np.ones(self._x.shape[0], dtype=bool)
        if labels:
            unlabeled[np.fromiter(labels.keys(), dtype=np.int64)] = False
        rest = np.flatnonzero(unlabeled)
        if rest.size > _ESTIMATE_POOL:  # a seeded subset: the estimate of a huge pool costs a bounded pass
            gen = torch.Generator().manual_seed(derive_seed(self._seed, "estimate", len(labels)))
            rest = np.sort(rest[torch.randperm(rest.size, generator=gen)[:_ESTIMATE_POOL].numpy()])
        conf = post.predict_proba(self._x[torch.from_numpy(rest)]).max(1).values if rest.size else torch.zeros(0)
        hits, audit_conf = self._audit_rectifiers(post, audits)
        est = accuracy_interval(conf, hits, audit_conf, level=level)
        prog = self._signals.progress(post, history, self._replay.replay, min_labels=GAIN_WINDOW)
        change = prog["change_per_label"]
        expected = change * GAIN_HORIZON if math.isfinite(change) else math.nan
        return {"n_labels": len(labels), **est.as_dict(), "pool_size": int(unlabeled.sum()),
                "audit_rate": self.audit_rate, "gain_per_label": prog["gain_per_label"],
                "change_per_label": change, "expected_gain": expected, "horizon": GAIN_HORIZON,
                "gain_window": prog["window"] or GAIN_WINDOW, "stop_threshold": self._stop_gain,
                "stop": stop_recommended(expected, self._stop_gain)}

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

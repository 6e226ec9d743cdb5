"""Label-error review of a labeling :class:`~bayesal.labeling.session.Session`: which given labels the
model doubts.

Each labeled item's *leave-one-out* predictive — the current posterior without that item's label, a
downdate of it, never a refit (:func:`bayesal.laplace.leave_one_out`) — gives the probability of the
label it was given from all the *other* labels, and that of the likeliest class it was not given. The
item's **label doubt** is the alternative's share of the two (:attr:`LeaveOneOut.doubt
<bayesal.laplace.LeaveOneOut.doubt>`, the one score the web app's Review, ``bayesal review``, the exports
and the Label Studio backend all rank by): above 0.5 where the other labels prefer another class. The
items with the largest doubt are the likeliest label errors. Nothing here writes an event: a label found
wrong is changed with :meth:`Session.correct <bayesal.labeling.session.Session.correct>`.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch

from bayesal.exceptions import InvalidInputError
from bayesal.laplace import LastLayerLaplace, LeaveOneOut, LeaveOneOutCache, leave_one_out

from .views import SessionViews

__all__ = ["SessionReview", "LabelDoubt"]


class LabelDoubt:
    """The leave-one-out view of every current label under one posterior state.

    Attributes
    ----------
    indices : ndarray of shape (n,)
        Labeled pool indices, in labeling order.
    labels : ndarray of shape (n,)
        Their given class indices.
    doubt : ndarray of shape (n,)
        The label doubt: ``a / (a + g)`` of the leave-one-out probabilities of the given label ``g`` and
        of the likeliest other class ``a``.
    probs : ndarray of shape (n, C)
        The leave-one-out predictive of each item.
    """

    def __init__(self, labels: dict[int, int], loo: LeaveOneOut | None, num_classes: int) -> None:
        self.indices = np.fromiter(labels.keys(), dtype=np.int64, count=len(labels))
        self.labels = np.fromiter(labels.values(), dtype=np.int64, count=len(labels))
        if loo is not None:
            self.probs = loo.probs.cpu().numpy()
            self.doubt = loo.doubt.cpu().numpy()
        else:
            self.probs = np.zeros((0, num_classes))
            self.doubt = np.zeros(0)

    def order(self) -> np.ndarray:
        """Rows by decreasing doubt (ties: the earlier label first)."""
        return np.argsort(-self.doubt, kind="stable")


#: How close (absolute, relative to the largest entry) the review's own rank-1 update must come to the
#: session's posterior for the incremental leave-one-out to be used; else it is recomputed in full.
INCREMENTAL_TOLERANCE = 1e-9


class _DoubtState:
    """What the last :meth:`SessionReview.label_doubts` computed, for the next one: the posterior and
    labels it was for, its result and (shared covariance) the incremental cache."""

    def __init__(self, posterior: LastLayerLaplace, key: tuple[tuple[int, int], ...], result: LabelDoubt,
                 cache: LeaveOneOutCache | None) -> None:
        self.posterior, self.key, self.result, self.cache = posterior, key, result, cache


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    scale = float(b.abs().max()) if b.numel() else 0.0
    return bool(torch.allclose(a, b, rtol=0.0, atol=INCREMENTAL_TOLERANCE * max(scale, 1e-300)))


class SessionReview(SessionViews):
    """Label-error review (a part of :class:`~bayesal.labeling.session.Session`)."""

    _doubt_state: _DoubtState | None = None
    #: label_doubts calls served by the incremental cache (the others recomputed in full)
    _doubt_incremental: int = 0

    def label_doubts(self) -> LabelDoubt:
        """The leave-one-out view of every current label under the current posterior.

        Computed once per posterior state. After one new answer absorbed as an update (no refit, no
        correction, past the early phase) it follows from the previous one in ``O(n·D + D²)`` for ``n``
        labels (:class:`~bayesal.laplace.LeaveOneOutCache`: the update's rank-1 step applied to the
        cached logits and variances, used only when its posterior matches the session's up to
        round-off); otherwise it is computed in full, ``O(n·D²)``.

        Returns
        -------
        LabelDoubt
        """
        lock = self.__dict__.setdefault("_review_lock", threading.Lock())  # atomic: one lock per session
        with self._state.lock:
            posterior, labels = self._state.posterior, dict(self._book.labels)
        key = tuple(labels.items())
        with lock:
            last = self._doubt_state
            if last is not None and last.posterior is posterior and last.key == key:
                return last.result
            cache = self._advanced(last, posterior, key)
            if cache is not None:
                self._doubt_incremental += 1
            elif labels and posterior.hessian == "shared":
                idx = torch.tensor(list(labels), dtype=torch.long)
                cache = LeaveOneOutCache(posterior, self._x[idx], torch.tensor(list(labels.values())))
            if cache is not None:
                loo: LeaveOneOut | None = cache.result()
            elif labels:
                idx = torch.tensor(list(labels), dtype=torch.long)
                loo = leave_one_out(posterior, self._x[idx], torch.tensor(list(labels.values())))
            else:
                loo = None
            out = LabelDoubt(labels, loo, posterior.num_classes)
            self._doubt_state = _DoubtState(posterior, key, out, cache)
            return out

    def _advanced(self, last: _DoubtState | None, posterior: LastLayerLaplace,
                  key: tuple[tuple[int, int], ...]) -> LeaveOneOutCache | None:
        """The last state's cache advanced by the one label added since, if that reproduces ``posterior``."""
        if last is None or last.cache is None or len(key) != len(last.key) + 1 or key[:-1] != last.key:
            return None
        index, label = key[-1]
        cache = last.cache
        mine = cache.add(self._x[index], label)
        if not (_close(mine.mean, posterior.mean) and _close(mine.bias, posterior.bias)
                and _close(mine.covariance, posterior.covariance)):
            return None  # a refit in between, or the early phase's exact head: recompute in full
        return cache

    def label_doubt(self) -> dict[int, float]:
        """``{pool index: doubt}`` of every current label (in labeling order): under the posterior without
        that label, the likeliest other class's probability ``a`` against the given label's ``g``, ``a / (a + g)``
        (above 0.5 where another class is preferred; ``1 − g`` with two classes).

        Returns
        -------
        dict of int to float
        """
        d = self.label_doubts()
        return {int(i): float(v) for i, v in zip(d.indices, d.doubt)}

    def suspicious(self, k: int = 10, exclude: set[int] | None = None) -> list[dict[str, Any]]:
        """The ``k`` labeled items whose given label the model doubts most, most doubted first.

        Parameters
        ----------
        k : int, default 10
            How many items (fewer when fewer are labeled).
        exclude : set of int, optional
            Pool indices to leave out (e.g. labels a reviewer has already confirmed).

        Returns
        -------
        list of dict
            ``index``, ``label`` (the given class name), ``label_index``, ``doubt`` and ``probs`` (the
            leave-one-out predictive, one float per class).
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidInputError(f"k must be a positive integer, got {k!r}")
        d = self.label_doubts()
        out: list[dict[str, Any]] = []
        for r in d.order():
            i = int(d.indices[r])
            if exclude and i in exclude:
                continue
            c = int(d.labels[r])
            out.append({"index": i, "label": self._names[c], "label_index": c, "doubt": float(d.doubt[r]),
                        "probs": [float(p) for p in d.probs[r]]})
            if len(out) == k:
                break
        return out

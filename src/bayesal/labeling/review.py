"""Label-error review of a labeling :class:`~bayesal.labeling.session.Session`: which given labels the
model doubts.

Each labeled item's *leave-one-out* predictive — the current posterior without that item's label, a
downdate of it, never a refit (:func:`bayesal.laplace.leave_one_out`) — gives the probability of the
label it was given from all the *other* labels. Its complement is the item's **label doubt**; the
items with the largest doubt are the likeliest label errors. Nothing here writes an event: a label found
wrong is changed with :meth:`Session.correct <bayesal.labeling.session.Session.correct>`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from bayesal.exceptions import InvalidInputError
from bayesal.laplace import LastLayerLaplace, leave_one_out

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
        ``1 −`` the leave-one-out probability of the given label.
    probs : ndarray of shape (n, C)
        The leave-one-out predictive of each item.
    """

    def __init__(self, posterior: LastLayerLaplace, features: torch.Tensor, labels: dict[int, int]) -> None:
        self.indices = np.fromiter(labels.keys(), dtype=np.int64, count=len(labels))
        self.labels = np.fromiter(labels.values(), dtype=np.int64, count=len(labels))
        if self.indices.size:
            loo = leave_one_out(posterior, features[torch.from_numpy(self.indices)], torch.from_numpy(self.labels))
            self.probs = loo.probs.cpu().numpy()
            self.doubt = loo.doubt.cpu().numpy()
        else:
            self.probs = np.zeros((0, posterior.num_classes))
            self.doubt = np.zeros(0)
        self._row = {int(i): r for r, i in enumerate(self.indices)}

    def order(self) -> np.ndarray:
        """Rows by decreasing doubt (ties: the earlier label first)."""
        return np.argsort(-self.doubt, kind="stable")

    def row(self, index: int) -> int:
        """The row of pool ``index`` (``KeyError`` if it is not labeled)."""
        return self._row[index]


class SessionReview(SessionViews):
    """Label-error review (a part of :class:`~bayesal.labeling.session.Session`)."""

    _doubt_cache: tuple[LastLayerLaplace, tuple[tuple[int, int], ...], LabelDoubt] | None = None

    def label_doubts(self) -> LabelDoubt:
        """The leave-one-out view of every current label under the current posterior (computed once per
        posterior state: ``O(n·D²)`` for ``n`` labels, then cached until the next action or refit).

        Returns
        -------
        LabelDoubt
        """
        with self._state.lock:
            posterior, labels = self._state.posterior, dict(self._book.labels)
        key = tuple(labels.items())
        cached = self._doubt_cache
        if cached is not None and cached[0] is posterior and cached[1] == key:
            return cached[2]
        out = LabelDoubt(posterior, self._x, labels)
        self._doubt_cache = (posterior, key, out)
        return out

    def label_doubt(self) -> dict[int, float]:
        """``{pool index: doubt}`` of every current label: 1 − the probability that the posterior without
        that label gives it (in labeling order).

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

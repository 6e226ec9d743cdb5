"""The posterior of a labeling session as a function of its action history.

* Start from the last fit point in the history (a ``retrain``, or a ``tell`` that triggered the
  automatic retrain) — the head trained from scratch on the labels at that point, seeded by
  ``(seed, position)`` — or from the zero-mean prior ``N(0, λ₀⁻¹ I)`` if there is none;
* then every later ``tell`` is one Bayesian update with step ``gamma``, every ``correct`` the mean shift
  ``μ ← μ + γ Σ (e_new − e_old) φᵀ`` (the Newton step that swaps the old label's likelihood term for the
  new one; with the "gaussian" curvature the Hessian of a point does not depend on its label, so ``Σ``
  is unchanged) and ``skip`` changes nothing.

Posteriors are never modified in place, so a caller may keep earlier ones (the undo cache does).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from bayesal.laplace.posterior import LastLayerLaplace
from bayesal.laplace.settings import PosteriorOptions
from bayesal.utils.rng import derive_seed

from .history import LabelBook, is_fit_point

__all__ = ["PosteriorReplay"]


class PosteriorReplay:
    """Builds the posteriors of a session over the pool ``x`` ``(N, D)`` float64 with ``num_classes``
    classes, from its saved settings (``seed`` and the posterior ``options``)."""

    def __init__(self, x: torch.Tensor, num_classes: int, *, seed: int, options: PosteriorOptions) -> None:
        self.x = x
        self.num_classes = num_classes
        self.seed = seed
        self.options = options
        self.gamma = options.gamma
        self._prior: LastLayerLaplace | None = None

    def _new(self, **kwargs: Any) -> LastLayerLaplace:
        return self.options.posterior(dtype=torch.float64, **kwargs)

    def prior(self) -> LastLayerLaplace:
        """Zero-mean prior posterior ``N(0, λ₀⁻¹ I)`` (no data), shared — it is never modified."""
        if self._prior is None:
            c, d = self.num_classes, self.x.shape[1]
            self._prior = self._new().fit(
                self.x[:0], torch.zeros(0, dtype=torch.long), weight=torch.zeros(c, d, dtype=torch.float64), num_classes=c
            )
        return self._prior

    def fit(self, labels: Mapping[int, int], position: int) -> LastLayerLaplace:
        """Head trained from scratch on ``labels`` (sorted by index) and its Laplace posterior."""
        idx = sorted(labels)
        y = torch.tensor([labels[i] for i in idx], dtype=torch.long)
        post = self._new(random_state=derive_seed(self.seed, "fit", position))
        return post.fit(self.x[idx], y, num_classes=self.num_classes)

    def transition(self, post: LastLayerLaplace, action: Mapping[str, Any], position: int,
                   labels_after: Mapping[int, int]) -> LastLayerLaplace:
        """Posterior after applying ``action`` to ``post`` at history ``position``; ``labels_after``
        are the labels once it is applied (a fit point trains on them)."""
        op = action["op"]
        if is_fit_point(action):
            return self.fit(labels_after, position)
        if op == "tell":
            i = int(action["index"])
            return post.update(self.x[i : i + 1], torch.tensor([int(action["label"])]))
        if op == "correct":
            return post.relabel(self.x[int(action["index"])], int(action["old"]), int(action["label"]))
        return post  # skip

    def replay(self, history: Sequence[Mapping[str, Any]]) -> LastLayerLaplace:
        """Posterior of an action history: last fit point (or the prior) + the updates after it."""
        last = max((j for j, a in enumerate(history) if is_fit_point(a)), default=-1)
        labels: dict[int, int] = {}
        for a in history[: last + 1]:
            LabelBook.set_label(labels, a)
        post = self.fit(labels, last) if last >= 0 else self.prior()
        for j in range(last + 1, len(history)):
            LabelBook.set_label(labels, history[j])
            post = self.transition(post, history[j], j, labels)
        return post

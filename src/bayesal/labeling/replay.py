"""The posterior of a labeling session as a function of its action history.

* Start from the last fit point in the history (a ``retrain``, or a ``tell`` that triggered the
  automatic retrain) — the head trained from scratch on the labels at that point, seeded by
  ``(seed, position)`` — or from the prior ``N(M₀, λ₀⁻¹ I)`` if there is none (``M₀`` the session's
  prior mean, e.g. a zero-shot head from the class names; zero without one);
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

from bayesal.laplace import LastLayerLaplace, PosteriorOptions

from .engine import PosteriorFold
from .history import LabelBook, is_fit_point

__all__ = ["PosteriorReplay"]

#: The random stream of a session's head fits (``derive_seed(seed, FIT_TAG, position)``).
FIT_TAG = "fit"


class PosteriorReplay:
    """Builds the posteriors of a session over the pool ``x`` ``(N, D)`` float64 with ``num_classes``
    classes, from its saved settings (``seed`` and the posterior ``options``), with the engine's
    :class:`~bayesal.labeling.engine.PosteriorFold`."""

    def __init__(self, x: torch.Tensor, num_classes: int, *, seed: int, options: PosteriorOptions,
                 prior_mean: torch.Tensor | None = None) -> None:
        self.x = x
        self.num_classes = num_classes
        self.seed = seed
        self.options = options
        self.gamma = options.gamma
        settings = {**options.posterior_kwargs(), "dtype": torch.float64}
        if prior_mean is not None:  # every fit and the prior itself are centred on it
            settings["prior_mean"] = prior_mean
        self.posteriors = PosteriorFold(settings, seed=seed, tag=FIT_TAG)

    def prior(self) -> LastLayerLaplace:
        """The prior posterior ``N(M₀, λ₀⁻¹ I)`` (no data), shared — it is never modified."""
        return self.posteriors.prior(self.num_classes, self.x.shape[1])

    def fit(self, labels: Mapping[int, int], position: int) -> LastLayerLaplace:
        """Head trained from scratch on ``labels`` (sorted by index) and its Laplace posterior."""
        idx = sorted(labels)
        y = torch.tensor([labels[i] for i in idx], dtype=torch.long)
        return self.posteriors.fit(self.x[idx], y, self.num_classes, position)

    def transition(self, post: LastLayerLaplace, action: Mapping[str, Any], position: int,
                   labels_after: Mapping[int, int], *, refit: bool = True) -> LastLayerLaplace:
        """Posterior after applying ``action`` to ``post`` at history ``position``; ``labels_after``
        are the labels once it is applied (a fit point trains on them). ``refit=False`` treats a fit
        point as the action alone (a tell is an update, a retrain changes nothing): the interim
        posterior while its refit runs in the background."""
        op = action["op"]
        if refit and is_fit_point(action):
            return self.fit(labels_after, position)
        if op == "tell":
            i = int(action["index"])
            return self.posteriors.update(post, self.x[i : i + 1], torch.tensor([int(action["label"])]))
        if op == "correct":
            return self.posteriors.relabel(post, self.x[int(action["index"])], int(action["old"]), int(action["label"]))
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

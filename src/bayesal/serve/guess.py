"""The model's guess for one item, as the labeling UIs show it (the web page and ``bayesal label``).

A guess is only shown when the model has something to say: with no labels (unless its prior has a mean,
a zero-shot guess from the class names), or when every class is equally probable (within
:data:`TOLERANCE`), the predictive is uniform and naming a "most probable" class would only reflect
the order of the classes. Otherwise the guess is the most probable class —
or, when several tie at the top (within the tolerance, as the margin strategy's picks often do),
all of them, so that no one of them is singled out by chance.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["ModelGuess", "model_guess", "TOLERANCE"]

# half a percentage point: below the whole percents the UIs print, so two classes shown with the same
# number are never told apart
TOLERANCE = 0.005


@dataclass(frozen=True)
class ModelGuess:
    """What to show about the model's prediction for one item.

    Attributes
    ----------
    top:
        ``(class index, probability)`` of the ``k`` most probable classes, most probable first.
    best:
        The classes to single out (highlight), most probable first: the most probable class and any
        class within the tolerance of it; empty when the model has no guess.
    no_guess:
        Why the model has no guess yet (``None`` when it has one): shown instead of ``top``.
    """

    top: list[tuple[int, float]]
    best: list[int]
    no_guess: str | None


def model_guess(probs: torch.Tensor | Sequence[float], n_labeled: int, *, k: int = 3,
                tolerance: float = TOLERANCE, prior_informed: bool = False) -> ModelGuess:
    """The guess shown for an item of predictive probabilities ``probs`` ``(C,)`` after ``n_labeled`` labels;
    ``prior_informed``: the model's prior has a mean (a zero-shot head), so its prediction is a guess even
    before the first label."""
    p = torch.as_tensor(probs, dtype=torch.float64).reshape(-1)
    order = torch.argsort(p, descending=True, stable=True)
    top = [(int(c), float(p[c])) for c in order[:k]]
    if n_labeled <= 0 and not prior_informed:
        return ModelGuess(top, [], "no labels yet")
    if float(p.max() - p.min()) <= tolerance:
        return ModelGuess(top, [], "every class is equally likely")
    best = [int(c) for c in order if float(p[c]) >= float(p.max()) - tolerance]
    return ModelGuess(top, best, None)

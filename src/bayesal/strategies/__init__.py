"""Query strategies (SPEC §5): top-b baselines, sequential selection with Bayesian updates, look-ahead.

``get_strategy(name, **kwargs)`` builds any of them by name; ``STRATEGY_NAMES`` lists the names.
``get_strategy("sequential", base="margin", update_with="most_likely")`` accepts a base by name
(with ``base_kwargs``) or as an instance.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .badge import BADGE
from .bait import BAIT
from .bald import BALD
from .base import LabeledSet, QueryResult, QueryStrategy
from .coreset import CoreSet
from .entropy import EntropySampling
from .least_confidence import LeastConfidence
from .lookahead import ExpectedLogLossReduction, OracleLookahead
from .margin import MarginSampling
from .random_sampling import RandomSampling
from .score import PredictiveScoreStrategy, ScoreStrategy
from .sequential import UPDATE_WITH, Sequential
from .typiclust import TypiClust
from .variation_ratio import VariationRatio

__all__ = [
    "LabeledSet",
    "QueryResult",
    "QueryStrategy",
    "ScoreStrategy",
    "PredictiveScoreStrategy",
    "RandomSampling",
    "EntropySampling",
    "MarginSampling",
    "LeastConfidence",
    "BALD",
    "VariationRatio",
    "BADGE",
    "CoreSet",
    "TypiClust",
    "BAIT",
    "Sequential",
    "OracleLookahead",
    "ExpectedLogLossReduction",
    "UPDATE_WITH",
    "BASE_STRATEGY_NAMES",
    "STRATEGY_NAMES",
    "get_strategy",
]

_BASES: dict[str, Callable[..., QueryStrategy]] = {
    "random": RandomSampling,
    "entropy": EntropySampling,
    "margin": MarginSampling,
    "least_confidence": LeastConfidence,
    "bald": BALD,
    "variation_ratio": VariationRatio,
    "badge": BADGE,
    "coreset": CoreSet,
    "typiclust": TypiClust,
    "bait": BAIT,
}
_ALIASES = {"least_confident": "least_confidence", "core_set": "coreset", "lc": "least_confidence"}

#: Single-shot (top-b / diversity) strategies.
BASE_STRATEGY_NAMES: tuple[str, ...] = tuple(_BASES)
#: Every name ``get_strategy`` accepts (besides aliases).
STRATEGY_NAMES: tuple[str, ...] = BASE_STRATEGY_NAMES + ("sequential", "oracle_lookahead", "expected_log_loss_reduction")


def get_strategy(name: str, **kwargs: Any) -> QueryStrategy:
    """Build the strategy called ``name`` (see ``STRATEGY_NAMES``) with ``kwargs``.

    ``"sequential"`` takes ``base`` (a name or a strategy; default ``"margin"``), ``base_kwargs`` and
    the :class:`Sequential` options; ``"oracle_lookahead"`` needs ``reference_features`` and
    ``reference_labels``.
    """
    key = _ALIASES.get(str(name).lower(), str(name).lower())
    if key in _BASES:
        return _BASES[key](**kwargs)
    if key == "sequential":
        base = kwargs.pop("base", "margin")
        base_kwargs = kwargs.pop("base_kwargs", {})
        if isinstance(base, str):
            base = get_strategy(base, **base_kwargs)
        elif base_kwargs:
            raise ValueError("base_kwargs is only used when base is given by name")
        return Sequential(base, **kwargs)
    if key == "oracle_lookahead":
        return OracleLookahead(**kwargs)
    if key == "expected_log_loss_reduction":
        return ExpectedLogLossReduction(**kwargs)
    raise ValueError(f"unknown strategy {name!r}; choose one of {STRATEGY_NAMES}")

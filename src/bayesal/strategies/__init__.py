"""Query strategies (one module each) behind one registry.

``make_strategy(spec, **kwargs)`` (alias ``get_strategy``) builds any of them from a spec string —
``"margin"``, ``"seq-margin@expected"``, ``"lookahead"``, ... (see :mod:`.registry`). A single-shot
strategy registers itself with the ``@register_strategy("name")`` class decorator in its module. Deployable
strategies are :class:`QueryStrategy` (``query``); strategies that read the candidates' true labels
(simulation upper bounds) are :class:`OracleStrategy` (``query_with_labels``). :func:`select` runs one
selection step (candidate subsampling, query, checks) for the experiment loop and the labeling session.
"""

from __future__ import annotations

from ._common import check_batch_size
from .badge import BADGE
from .bait import BAIT
from .bald import BALD
from .base import LabeledSet, OracleStrategy, QueryResult, QueryStrategy, Strategy
from .coreset import CoreSet
from .entropy import EntropySampling
from .least_confidence import LeastConfidence
from .lookahead import ExpectedLogLossReduction, OracleLookahead
from .margin import MarginSampling
from .pool_scoring import merge_top_k, shard_top_k
from .random_sampling import RandomSampling
from .registry import (
    BASE_STRATEGY_NAMES,
    ORACLE_STRATEGY_NAMES,
    SPEC_HELP,
    STRATEGY_NAMES,
    base_strategy_names,
    is_oracle,
    make_strategy,
    register_strategy,
    registered_strategies,
    score_strategy_names,
)
from .score import PredictiveScoreStrategy, ScoreStrategy
from .selection import select, subsample_candidates
from .sequential import DEPLOYABLE_UPDATES, UPDATE_WITH, OracleSequential, Sequential, UpdateWith
from .typiclust import TypiClust
from .variation_ratio import VariationRatio

#: The registry's builder under its historical name.
get_strategy = make_strategy

__all__ = [
    "LabeledSet",
    "QueryResult",
    "Strategy",
    "QueryStrategy",
    "OracleStrategy",
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
    "OracleSequential",
    "OracleLookahead",
    "ExpectedLogLossReduction",
    "UpdateWith",
    "UPDATE_WITH",
    "DEPLOYABLE_UPDATES",
    "BASE_STRATEGY_NAMES",
    "STRATEGY_NAMES",
    "ORACLE_STRATEGY_NAMES",
    "SPEC_HELP",
    "make_strategy",
    "get_strategy",
    "register_strategy",
    "registered_strategies",
    "base_strategy_names",
    "score_strategy_names",
    "is_oracle",
    "select",
    "subsample_candidates",
    "check_batch_size",
    "merge_top_k",
    "shard_top_k",
]

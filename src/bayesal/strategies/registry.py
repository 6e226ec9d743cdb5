"""The one place a strategy spec becomes a strategy, for the experiment runner, sessions and the CLI.

Grammar (case-insensitive; ``-`` and ``_`` are interchangeable):

* ``NAME``: a single-shot strategy, one of :data:`BASE_STRATEGY_NAMES` (aliases ``lc``,
  ``least-confident``, ``core-set``);
* ``seq-NAME``: sequential selection over ``NAME`` updated with the true labels (the paper's
  simulation, an oracle); ``seq-NAME@MODE`` with ``MODE`` one of ``oracle | most_likely | sampled |
  expected`` (the last three are deployable);
* ``sequential`` (keyword arguments ``base``, ``base_kwargs``, ``update_with`` — default
  ``expected``, deployable — and ``fast``) and ``oracle_sequential``;
* ``lookahead`` / ``expected_log_loss_reduction`` (deployable look-ahead);
* ``oracle-lookahead`` (the paper's upper bound; needs a held-out reference set).

Deployable specs give a :class:`~.base.QueryStrategy`, oracle specs an :class:`~.base.OracleStrategy`
(:func:`is_oracle`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from bayesal.exceptions import InvalidInputError

from .badge import BADGE
from .bait import BAIT
from .bald import BALD
from .base import OracleStrategy, QueryStrategy, Strategy
from .coreset import CoreSet
from .entropy import EntropySampling
from .least_confidence import LeastConfidence
from .lookahead import ExpectedLogLossReduction, OracleLookahead
from .margin import MarginSampling
from .random_sampling import RandomSampling
from .sequential import UPDATE_WITH, OracleSequential, Sequential, UpdateWith
from .typiclust import TypiClust
from .variation_ratio import VariationRatio

__all__ = [
    "BASE_STRATEGY_NAMES",
    "STRATEGY_NAMES",
    "ORACLE_STRATEGY_NAMES",
    "SPEC_HELP",
    "make_strategy",
    "is_oracle",
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
_ALIASES = {
    "least_confident": "least_confidence",
    "lc": "least_confidence",
    "core_set": "coreset",
    "lookahead": "expected_log_loss_reduction",
}

#: Single-shot (top-b / diversity) strategies.
BASE_STRATEGY_NAMES: tuple[str, ...] = tuple(_BASES)
#: Every name :func:`make_strategy` accepts besides aliases and ``seq-NAME[@MODE]`` specs.
STRATEGY_NAMES: tuple[str, ...] = BASE_STRATEGY_NAMES + (
    "sequential", "oracle_sequential", "expected_log_loss_reduction", "oracle_lookahead",
)
#: The names whose strategies need the candidates' true labels.
ORACLE_STRATEGY_NAMES: tuple[str, ...] = ("oracle_sequential", "oracle_lookahead")
#: One line listing what users may type (CLI spelling).
SPEC_HELP = (
    ", ".join(n.replace("_", "-") for n in BASE_STRATEGY_NAMES)
    + ", seq-NAME[@" + "|".join(UPDATE_WITH) + "] (NAME one of the former; no @MODE: oracle), "
    "lookahead, oracle-lookahead"
)


def _key(name: str) -> str:
    return str(name).strip().lower().replace("-", "_")


def _unknown(spec: Any) -> InvalidInputError:
    return InvalidInputError(f"unknown strategy {spec!r}; choose one of: {SPEC_HELP}")


def _base(name: Any, spec: Any, kwargs: dict[str, Any]) -> QueryStrategy:
    if isinstance(name, QueryStrategy):
        if kwargs:
            raise InvalidInputError("base_kwargs is only used when base is given by name")
        return name
    if isinstance(name, Strategy):  # an oracle base
        if kwargs:
            raise InvalidInputError("base_kwargs is only used when base is given by name")
        return name  # type: ignore[return-value]
    key = _ALIASES.get(_key(name), _key(name))
    if key not in _BASES:
        raise _unknown(spec)
    return _BASES[key](**kwargs)


def _sequential(base: Strategy, update_with: Any, kwargs: dict[str, Any]) -> Strategy:
    mode = UpdateWith.parse(update_with, "update_with")
    if mode is UpdateWith.ORACLE or isinstance(base, OracleStrategy):
        return OracleSequential(base, update_with=mode, **kwargs)
    return Sequential(base, update_with=mode, **kwargs)


def make_strategy(
    spec: str | Strategy,
    *,
    held_out: tuple[torch.Tensor, torch.Tensor] | None = None,
    **kwargs: Any,
) -> Strategy:
    """Build the strategy a spec names (grammar in the module docstring).

    Parameters
    ----------
    spec : str or Strategy
        What to build; a strategy object is returned as it is.
    held_out : tuple of torch.Tensor, optional
        ``(features (R, D), labels (R,))`` of a held-out set: the reference set of
        ``oracle-lookahead`` unless ``reference_features``/``reference_labels`` are given.
    **kwargs
        Options of the strategy (for ``seq-NAME`` specs: of :class:`Sequential`, plus
        ``base_kwargs`` for the base).

    Returns
    -------
    Strategy
        A :class:`QueryStrategy` (deployable) or an :class:`OracleStrategy` (needs true labels).

    Raises
    ------
    InvalidInputError
        For an unknown spec or option.
    """
    if isinstance(spec, Strategy):
        if kwargs:
            raise InvalidInputError("strategy options are only used when the strategy is given by name")
        return spec
    if not isinstance(spec, str):
        raise InvalidInputError(f"strategy must be a spec string or a strategy object, got {spec!r}")
    key = _key(spec)
    if key.startswith("seq_"):
        base_name, _, mode = key[4:].partition("@")
        base = _base(base_name, spec, dict(kwargs.pop("base_kwargs", {})))
        return _sequential(base, mode or UpdateWith.ORACLE, kwargs)
    key = _ALIASES.get(key, key)
    if key in _BASES:
        return _BASES[key](**kwargs)
    if key in ("sequential", "oracle_sequential"):
        base = _base(kwargs.pop("base", "margin"), spec, dict(kwargs.pop("base_kwargs", {})))
        default = UpdateWith.EXPECTED if key == "sequential" else UpdateWith.ORACLE
        mode = UpdateWith.parse(kwargs.pop("update_with", default), "update_with")
        if key == "oracle_sequential":
            return OracleSequential(base, update_with=mode, **kwargs)
        return _sequential(base, mode, kwargs)
    if key == "expected_log_loss_reduction":
        return ExpectedLogLossReduction(**kwargs)
    if key == "oracle_lookahead":
        if held_out is not None and "reference_features" not in kwargs:
            kwargs["reference_features"], kwargs["reference_labels"] = held_out
        if "reference_features" not in kwargs or "reference_labels" not in kwargs:
            raise InvalidInputError(
                f"strategy {spec!r} is a simulation oracle that reads true labels: it needs a held-out reference "
                "set (pass reference_features and reference_labels) and the candidates' labels"
            )
        return OracleLookahead(**kwargs)
    raise _unknown(spec)


def is_oracle(strategy: Strategy) -> bool:
    """Whether ``strategy`` needs the candidates' true labels (it cannot run in a labeling session)."""
    return isinstance(strategy, OracleStrategy)

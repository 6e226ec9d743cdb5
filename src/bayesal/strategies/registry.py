"""The one place a strategy spec becomes a strategy, for the experiment runner, sessions and the CLI.

Grammar (case-insensitive; ``-`` and ``_`` are interchangeable):

* ``NAME``: a single-shot strategy, one of :data:`BASE_STRATEGY_NAMES` (aliases ``lc``,
  ``least-confident``, ``core-set``) or any other strategy registered with
  :func:`~.registration.register_strategy`;
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

import importlib
import pkgutil
from typing import Any

import torch

from bayesal.exceptions import InvalidInputError

from .base import OracleStrategy, QueryStrategy, Strategy
from .lookahead import ExpectedLogLossReduction, OracleLookahead
from .registration import register_strategy, registered_strategies, resolve_name, strategy_key
from .sequential import UPDATE_WITH, OracleSequential, Sequential, UpdateWith

__all__ = [
    "BASE_STRATEGY_NAMES",
    "STRATEGY_NAMES",
    "ORACLE_STRATEGY_NAMES",
    "SPEC_HELP",
    "make_strategy",
    "is_oracle",
    "register_strategy",
    "registered_strategies",
    "base_strategy_names",
    "score_strategy_names",
]



def _import_strategy_modules() -> None:
    """Import every module of this package: a strategy module registers itself on import
    (:func:`register_strategy`), so a new strategy is one new file."""
    package = __name__.rpartition(".")[0]
    for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
        importlib.import_module(f"{package}.{info.name}")


_import_strategy_modules()

#: Spec-level aliases (the look-ahead is not a base of ``seq-NAME``); bases' aliases are registered.
_SPEC_ALIASES = {"lookahead": "expected_log_loss_reduction"}

#: The order in which help texts list the shipped strategies; others follow in registration order.
_LISTING_ORDER = ("random", "entropy", "margin", "least_confidence", "bald", "variation_ratio", "badge", "coreset",
                  "typiclust", "bait")


def base_strategy_names() -> tuple[str, ...]:
    """The registered single-shot strategies: the shipped ones, then any registered since."""
    rank = {name: i for i, name in enumerate(_LISTING_ORDER)}
    return tuple(sorted(registered_strategies(), key=lambda name: rank.get(name, len(rank))))


def score_strategy_names() -> tuple[str, ...]:
    """Specs whose utility is a per-task score (what the Label Studio backend can report for each
    task): the :class:`~.score.ScoreStrategy` ones, then ``seq-NAME`` for those registered with
    ``sequential_score``."""
    entries = [registered_strategies()[name] for name in base_strategy_names()]
    return (tuple(e.name for e in entries if e.per_task_score)
            + tuple(f"seq-{e.name}" for e in entries if e.sequential_score))


#: Single-shot (top-b / diversity) strategies shipped with bayesal.
BASE_STRATEGY_NAMES: tuple[str, ...] = base_strategy_names()
#: Every name :func:`make_strategy` accepts besides aliases and ``seq-NAME[@MODE]`` specs.
STRATEGY_NAMES: tuple[str, ...] = BASE_STRATEGY_NAMES + (
    "sequential", "oracle_sequential", "expected_log_loss_reduction", "oracle_lookahead",
)
#: The names whose strategies need the candidates' true labels.
ORACLE_STRATEGY_NAMES: tuple[str, ...] = ("oracle_sequential", "oracle_lookahead")


def _spec_help() -> str:
    return (
        ", ".join(n.replace("_", "-") for n in base_strategy_names())
        + ", seq-NAME[@" + "|".join(UPDATE_WITH) + "] (NAME one of the former; no @MODE: oracle), "
        "lookahead, oracle-lookahead"
    )


#: One line listing what users may type (CLI spelling).
SPEC_HELP = _spec_help()


def _unknown(spec: Any) -> InvalidInputError:
    return InvalidInputError(f"unknown strategy {spec!r}; choose one of: {_spec_help()}")


def _base(name: Any, spec: Any, kwargs: dict[str, Any]) -> QueryStrategy:
    if isinstance(name, QueryStrategy):
        if kwargs:
            raise InvalidInputError("base_kwargs is only used when base is given by name")
        return name
    if isinstance(name, Strategy):  # an oracle base
        if kwargs:
            raise InvalidInputError("base_kwargs is only used when base is given by name")
        return name  # type: ignore[return-value]
    entry = resolve_name(name)
    if entry is None:
        raise _unknown(spec)
    return entry.factory(**kwargs)


def _sequential(base: Strategy, update_with: Any, kwargs: dict[str, Any]) -> Strategy:
    mode = UpdateWith.parse(update_with, "update_with")
    if not isinstance(base, (QueryStrategy, OracleStrategy)):
        raise InvalidInputError(f"sequential selection needs a query strategy as its base, got {type(base).__name__}")
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
    key = strategy_key(spec)
    if key.startswith("seq_"):
        base_name, _, mode = key[4:].partition("@")
        base = _base(base_name, spec, dict(kwargs.pop("base_kwargs", {})))
        return _sequential(base, mode or UpdateWith.ORACLE, kwargs)
    key = _SPEC_ALIASES.get(key, key)
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
    entry = resolve_name(key)
    if entry is not None:
        return entry.factory(**kwargs)
    raise _unknown(spec)


def is_oracle(strategy: Strategy) -> bool:
    """Whether ``strategy`` needs the candidates' true labels (it cannot run in a labeling session)."""
    return isinstance(strategy, OracleStrategy)

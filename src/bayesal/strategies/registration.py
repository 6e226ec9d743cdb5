"""The table of single-shot strategies, filled by the :func:`register_strategy` decorator.

Each strategy module registers its class where it is defined::

    @register_strategy("margin", sequential_score=True)
    class MarginSampling(PredictiveScoreStrategy):
        ...

so that adding a strategy is one new module (imported by :mod:`.registry`, which every entry point
goes through). :func:`~.registry.make_strategy` builds registered strategies by name (and as the base of
``seq-NAME`` specs); services that report a per-task score (the Label Studio backend) list theirs with
:func:`~.registry.score_strategy_names`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from bayesal.exceptions import InvalidInputError

from .base import QueryStrategy
from .score import ScoreStrategy

__all__ = [
    "StrategyEntry", "register_strategy", "registered_strategies", "resolve_name", "strategy_key",
]

_S = TypeVar("_S", bound=type[QueryStrategy])


def strategy_key(name: str) -> str:
    """The registry's spelling of a name: lower case, ``-`` as ``_``, no surrounding blanks."""
    return str(name).strip().lower().replace("-", "_")


@dataclass(frozen=True)
class StrategyEntry:
    """One registered strategy: its name, class, alias names and whether its sequential version
    ranks per-task scores (see :func:`register_strategy`)."""

    name: str
    factory: type[QueryStrategy]
    aliases: tuple[str, ...] = ()
    sequential_score: bool = False

    @property
    def per_task_score(self) -> bool:
        """Whether its utility is a score of each candidate under the posterior alone (a
        :class:`~.score.ScoreStrategy`): what a service can report for every task."""
        return issubclass(self.factory, ScoreStrategy)


_REGISTRY: dict[str, StrategyEntry] = {}
_ALIASES: dict[str, str] = {}


def register_strategy(
    name: str, *, aliases: tuple[str, ...] = (), sequential_score: bool = False
) -> Callable[[_S], _S]:
    """Class decorator: make a deployable single-shot strategy buildable by name.

    Parameters
    ----------
    name : str
        The spec name (registry spelling: lower case, ``_``; users may type ``-``).
    aliases : tuple of str
        Further names for it.
    sequential_score : bool
        Its utility is deterministic and lies in ``[0, 1]``, so a service can rank the picks of its
        sequential version (``seq-NAME``) above every other task's score; only for score strategies.

    Returns
    -------
    callable
        The decorator; it returns the class unchanged.

    Raises
    ------
    InvalidInputError
        A name or alias taken by another strategy, a class that is not a :class:`QueryStrategy`, or
        ``sequential_score`` on a strategy without per-task scores.
    """
    key = strategy_key(name)
    alias_keys = tuple(strategy_key(a) for a in aliases)
    for k in (key, *alias_keys):  # the spec grammar reads these
        if not k or k.startswith("seq_") or "@" in k:
            raise InvalidInputError(f"strategy name {k!r} cannot be registered: empty, 'seq-…' or with '@'")

    def deco(cls: _S) -> _S:
        if not (isinstance(cls, type) and issubclass(cls, QueryStrategy)):
            raise InvalidInputError(f"strategy {name!r}: only QueryStrategy classes can be registered, got {cls!r}")
        entry = StrategyEntry(key, cls, alias_keys, sequential_score)
        if sequential_score and not entry.per_task_score:
            raise InvalidInputError(f"strategy {name!r}: sequential_score needs a ScoreStrategy")
        for k in (key, *alias_keys):
            owner = _ALIASES.get(k, k if k in _REGISTRY else None)
            if owner is not None and _REGISTRY[owner].factory is not cls:
                raise InvalidInputError(f"strategy name {k!r} is already registered for {_REGISTRY[owner].factory.__name__}")
        _REGISTRY[key] = entry
        _ALIASES.update({a: key for a in alias_keys})
        return cls

    return deco


def registered_strategies() -> dict[str, StrategyEntry]:
    """The registered strategies by name, in registration order."""
    return dict(_REGISTRY)


def resolve_name(name: str) -> StrategyEntry | None:
    """The entry a name or alias (any spelling) refers to; ``None`` if none."""
    key = strategy_key(name)
    return _REGISTRY.get(_ALIASES.get(key, key))

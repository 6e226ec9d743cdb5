"""How a labeling :class:`~bayesal.labeling.session.Session` is opened: over a dataset, or from its
state directory — resumed from the snapshot plus the log, or recovered from whichever copy of the
events is intact (:mod:`bayesal.labeling.recovery`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from bayesal.exceptions import InvalidInputError
from bayesal.strategies import QueryStrategy, Strategy, is_oracle, make_strategy
from bayesal.utils import as_features

from .config import check_features
from .schema import check_header
from .storage import LOG_NAME
from .store import SessionStore, StorageOptions

if TYPE_CHECKING:  # the part is only ever a base of Session
    from .session import Session

__all__ = ["SessionOpening", "resolve_strategy"]


def resolve_strategy(spec: str | Strategy, kwargs: Mapping[str, Any]) -> QueryStrategy:
    """The session's strategy from the registry; refused at once if it needs true labels."""
    try:
        strategy = make_strategy(spec, **dict(kwargs))
    except TypeError as err:  # an option the strategy does not take (e.g. from an edited session header)
        raise InvalidInputError(f"strategy {spec!r} cannot be built with the options {sorted(kwargs)[:10]}: {err}") from err
    if is_oracle(strategy) or not isinstance(strategy, QueryStrategy):
        raise InvalidInputError(
            f"strategy {spec!r} needs the candidates' true labels (a simulation oracle), which a labeling "
            "session does not have; use a deployable one, e.g. 'seq-margin@expected', 'sequential' "
            "(update_with 'expected', 'most_likely' or 'sampled') or 'lookahead'"
        )
    return strategy


class SessionOpening:
    """The opening classmethods of a session (a part of :class:`~bayesal.labeling.session.Session`)."""

    @classmethod
    def from_dataset(cls, dataset: Any, **kwargs: Any) -> Session:
        """Session over ``dataset.train_features`` with its class names and ``train_items``.

        Parameters
        ----------
        dataset : Dataset
            A :class:`bayesal.data.Dataset` (or any object with ``train_features``, ``class_names``
            and optionally ``name`` and ``train_items``).
        **kwargs
            Further :class:`Session` arguments; ``meta`` gains the dataset's name.

        Returns
        -------
        Session
        """
        meta = dict(kwargs.pop("meta", None) or {})
        meta.setdefault("dataset", getattr(dataset, "name", None))
        kwargs.setdefault("items", getattr(dataset, "train_items", None))
        return cast("type[Session]", cls)(dataset.train_features, list(dataset.class_names), meta=meta, **kwargs)

    @classmethod
    def resume(
        cls,
        state_dir: str | os.PathLike[str],
        features: Any,
        *,
        items: Sequence[Any] | np.ndarray | None = None,
        strategy: str | QueryStrategy | None = None,
        storage: StorageOptions | None = None,
        background: bool = True,
        **storage_options: Any,
    ) -> Session:
        """Reopen a session from its snapshot plus the log events the snapshot does not contain yet.

        Parameters
        ----------
        state_dir : path
            The session's directory.
        features : array-like of shape (N, D)
            The session's pool (checked against the saved shape and feature hash).
        items : sequence or array of length N, optional
            Display items, as for :class:`Session`.
        strategy : str or QueryStrategy, optional
            Overrides the saved strategy (required if the session was made with a strategy object).
        storage, background, **storage_options
            As for :class:`Session` (the refit policy is the saved one; a session saved before
            ``reselect`` existed has none).

        Returns
        -------
        Session
            The reopened session, holding the directory lock until :meth:`close`.

        Raises
        ------
        CorruptStateError
            The snapshot or the log is damaged or they disagree; :meth:`recover` rebuilds from
            whichever copy of the events is intact.
        StateMismatchError
            ``features`` are not the session's pool.
        SessionLockedError
            Another process or open session holds the directory.
        SessionNotFoundError
            ``state_dir`` holds no session.
        """
        return cls._open(state_dir, features, items, strategy, StorageOptions.build(storage, storage_options),
                         recover=False, background=background)

    @classmethod
    def recover(
        cls,
        state_dir: str | os.PathLike[str],
        features: Any,
        *,
        items: Sequence[Any] | np.ndarray | None = None,
        strategy: str | QueryStrategy | None = None,
        drop_damaged: bool = False,
        storage: StorageOptions | None = None,
        background: bool = True,
        **storage_options: Any,
    ) -> Session:
        """Rebuild a session by replaying its events and write a fresh snapshot and, where needed, log.

        The events come from the label log (a torn last line is dropped) or, where the log is damaged,
        missing or shorter, from the snapshot if it belongs to the same session and agrees with the
        log's intact part. Files that are replaced are kept aside (``labels.jsonl.damaged``,
        ``session.state.corrupt`` / ``.replaced``), never deleted, and only after the events replayed
        without error; :attr:`recovery_notes` says what was done.

        Parameters
        ----------
        state_dir, features, items, strategy, storage, background, **storage_options
            As for :meth:`resume`.
        drop_damaged : bool, default False
            For a log damaged in the middle whose later events no snapshot holds: keep the events
            before the damage (otherwise that case raises).

        Returns
        -------
        Session

        Raises
        ------
        CorruptStateError
            No intact copy of the events can be trusted (the message says what to do).
        StateMismatchError, SessionLockedError, SessionNotFoundError
            As for :meth:`resume`.
        """
        return cls._open(state_dir, features, items, strategy, StorageOptions.build(storage, storage_options),
                         recover=True, drop_damaged=drop_damaged, background=background)

    @classmethod
    def _open(cls, state_dir: str | os.PathLike[str], features: Any, items: Sequence[Any] | np.ndarray | None,
              strategy: str | QueryStrategy | None, options: StorageOptions, *, recover: bool,
              drop_damaged: bool = False, background: bool = True) -> Session:
        """Lock, plan, rebuild from the plan's events, then (only then) touch the files."""
        path = Path(state_dir)
        x = as_features(features, name="pool features", dtype=torch.float64)
        store = SessionStore.lock(path, options)
        try:
            plan = store.plan(recover=recover, drop_damaged=drop_damaged)  # under the lock: cannot go stale
            # every setting present and typed before any is read (the files layer checked only what it uses)
            check_header(plan.header, f"the session header in {path / LOG_NAME}")
            check_features(plan.header, x, path)
            self = cast("Session", cls.__new__(cls))
            self._setup(plan.header, x, items, cls._saved_strategy(plan.header, strategy, path), options, background)
            self._state_dir = path
            self._engine.resume(plan.events, cached=plan.cached,
                                saved=plan if plan.posterior_state is not None else None, where=plan.where)
            store.open_log(plan)
            self._engine.store = store
            self.recovery_notes = list(plan.notes)
            if plan.write_snapshot:
                self._engine.snapshot(sync=True)
        except BaseException:
            store.close()
            raise
        return self

    @staticmethod
    def _saved_strategy(header: Mapping[str, Any], strategy: str | QueryStrategy | None,
                        state_dir: Path) -> QueryStrategy:
        if isinstance(strategy, (Strategy, str)):
            return resolve_strategy(strategy, {})
        if strategy is not None:
            raise InvalidInputError(f"strategy must be a name, a QueryStrategy or None, got {strategy!r}")
        saved = header["strategy"]
        if saved.get("object"):
            raise InvalidInputError(
                f"the session in {state_dir} used a strategy object ({saved['name']!r}); pass strategy= to resume"
            )
        try:
            return resolve_strategy(saved["name"], saved.get("kwargs", {}))
        except InvalidInputError as err:
            raise InvalidInputError(f"the session in {state_dir} saved a strategy this version cannot build ({err}); "
                                    "pass strategy= to resume it with another one") from err

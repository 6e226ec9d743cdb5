"""Interactive active-learning session: query, tell, undo, retrain — crash-safe.

A :class:`Session` holds a pool of features ``(N, D)``, the class names, a query strategy and a
:class:`~bayesal.laplace.posterior.LastLayerLaplace` posterior. Every answer is absorbed immediately
with the closed-form Bayesian update (milliseconds, see ``docs/method.md``); :meth:`Session.retrain`
refits the head from scratch — re-selecting λ₀ and the predictive's spread where the options leave them
to cross-validation — and so does every *fit point* of the refit policy (:mod:`bayesal.labeling.policy`):
every ``retrain_every`` labels and/or, with ``reselect="doubling"``, when the number of labels reaches
``base · 2^k`` (10, 20, 40, … by default).

**Background refits.** With ``background=True`` (the default) the answer that is a fit point is logged
as one ("refit here") and returns at once: the refit runs in a worker thread while the posterior keeps
absorbing answers as updates of the previous one (queries continue from it). When the refit is done
the session swaps in the refit plus the updates logged since the fit point — exactly what replaying
the history gives — atomically; a newer fit point supersedes a pending one, undoing a fit point
cancels its refit, and no snapshot is written while a refit is pending (a resume replays the log to
the same posterior). :meth:`Session.wait_refit` waits for the swap; ``background=False`` refits
synchronously in the call.

**Event sourcing.** Everything the user does is an *event* — ``tell``, ``skip``, ``correct``,
``retrain``, ``undo``, ``redo`` — appended to the label log and fsync-ed *before* the call returns. The
session state is a deterministic function of the log: folding the events gives the effective action
history (:mod:`bayesal.labeling.history`) and the history gives the posterior
(:mod:`bayesal.labeling.replay`). Undo restores the posterior kept from before the undone action, or
replays it when the bounded cache no longer reaches that far back.

**Persistence** in ``state_dir`` (:mod:`bayesal.labeling.store`), written through the labeling engine
(:class:`~bayesal.labeling.engine.LabelingEngine`, shared with the Label Studio backend): the label log
is the source of truth, its first line the configuration (:mod:`bayesal.labeling.config`); the
snapshot is a cache for fast resume, replaced atomically every ``snapshot_every`` events, in a
background thread by default. :meth:`Session.resume` loads it and replays the log events it lacks;
:meth:`Session.recover` rebuilds the session from whichever copy of the events is intact
(:mod:`bayesal.labeling.recovery`). No acknowledged label is lost, whatever moment the process dies at.

**Randomness.** There is no mutable RNG to save: each query draws from a generator seeded by
``(seed, number of events so far)`` and each head fit by ``(seed, position in the history)``. Two
sessions with the same seed and the same answers make identical queries, a resumed session continues
exactly as the original would have, and calling :meth:`Session.query` twice without answering returns
the same instances — with ``background=False``; with background refits, a query depends also on
whether the pending refit has landed yet (the posterior reached after it does not).
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bayesal.exceptions import CorruptStateError, InvalidInputError, StateMismatchError
from bayesal.laplace import LastLayerLaplace, PosteriorOptions
from bayesal.strategies import LabeledSet, QueryStrategy, RandomSampling, Strategy, is_oracle, make_strategy, select
from bayesal.utils import as_features, derive_seed

from .config import check_features, feature_hash, new_header, saved_options
from .engine import LabelingEngine
from .history import LabelBook
from .policy import DEFAULT_RESELECT_BASE, RefitPolicy
from .replay import PosteriorReplay
from .schema import check_header
from .signals import StoppingSignals
from .state import SessionState
from .storage import LOG_NAME, STATE_NAME
from .store import SessionStore, StorageOptions

__all__ = [
    "Session", "StorageOptions", "CorruptStateError", "StateMismatchError", "feature_hash",
    "LOG_NAME", "STATE_NAME",
]


def _resolve_strategy(spec: str | Strategy, kwargs: Mapping[str, Any]) -> QueryStrategy:
    """The session's strategy from the registry; refused at once if it needs true labels."""
    strategy = make_strategy(spec, **dict(kwargs))
    if is_oracle(strategy) or not isinstance(strategy, QueryStrategy):
        raise InvalidInputError(
            f"strategy {spec!r} needs the candidates' true labels (a simulation oracle), which a labeling "
            "session does not have; use a deployable one, e.g. 'seq-margin@expected', 'sequential' "
            "(update_with 'expected', 'most_likely' or 'sampled') or 'lookahead'"
        )
    return strategy


class Session:
    """Pool-based labeling session with immediate Bayesian updates and crash-safe persistence.

    Parameters
    ----------
    features : array-like of shape (N, D)
        Pool features (numpy or torch; must be finite).
    class_names : sequence of str or int
        The ``C ≥ 2`` class names (labels may be given as a name or as an index into this list), or
        the number of classes ``C`` (names ``"0" … "C-1"``).
    items : sequence of length N, optional
        What a person labels (texts, images); display only, never saved.
    strategy : str or QueryStrategy, default "margin"
        A deployable strategy spec for :func:`bayesal.strategies.make_strategy` (``"margin"``,
        ``"seq-margin@expected"``, ``"sequential"``, ``"lookahead"``, ``"random"``, ...), or a
        :class:`QueryStrategy` object (then it must be passed again to :meth:`resume`). Strategies
        that need true labels (``"seq-margin"``, ``"oracle-lookahead"``) are refused here.
    strategy_kwargs : mapping, optional
        Keyword arguments for the factory (saved).
    options : PosteriorOptions, optional
        The posterior's settings (saved): λ₀, curvature, covariance structure, mean-field scale, the
        step size ``γ`` and Newton steps of the Bayesian update (also of label corrections and of every
        update a strategy simulates) and how :meth:`retrain` fits the head. None: the defaults of
        :class:`~bayesal.laplace.settings.PosteriorOptions` (λ₀ by cross-validation, categorical
        curvature, ``γ = 1`` with 5 damped Newton steps, the exact MAP head);
        ``PosteriorOptions.paper()`` is the paper's (``γ = 10``, one step, 200 epochs of RAdam).
        Computations use float64 on the CPU.
    retrain_every : int, optional
        Retrain the head from scratch after this many new labels (None: not on a count). Needs labels
        of at least 2 classes.
    reselect : {"doubling"}, optional
        Also refit (re-selecting λ₀ and the spread) when the number of labels reaches
        ``reselect_base · 2^k`` — 10, 20, 40, 80, … — once labels of 2 classes exist (saved; None:
        only ``retrain_every`` and :meth:`retrain`). ``bayesal label`` and ``bayesal serve`` use
        "doubling".
    reselect_base : int, default 10
        The doubling schedule's first fit point.
    background : bool, default True
        Run refits in a worker thread so no call waits for one (see the module docstring); False
        refits inside the call that triggers it (deterministic queries, as in experiments and tests).
        Not saved: :meth:`resume` takes it again.
    candidate_size : int or None, default 1000
        Each query scores a random subset of this many unlabeled instances; None scores them all.
    random_state : int, optional
        Integer seed (None draws one; it is saved either way).
    state_dir : path, optional
        Directory for the label log and snapshot (created; must not hold a session yet). None keeps
        the session in memory only.
    storage : StorageOptions, optional
        How the state is kept (fsync, snapshot schedule, undo cache); defaults as documented there.
    meta : mapping, optional
        JSON-serializable extra information saved in the header (e.g. the dataset name).
    **storage_options
        Fields of :class:`StorageOptions` given as keywords (``fsync=False``, ``snapshot_every=10``,
        …); they override ``storage``.

    Raises
    ------
    InvalidInputError
        A bad setting or input (the message names it).
    SessionExistsError
        ``state_dir`` already holds a session.
    """

    def __init__(
        self,
        features: Any,
        class_names: Sequence[str] | int,
        *,
        items: Sequence[Any] | None = None,
        strategy: str | QueryStrategy = "margin",
        strategy_kwargs: Mapping[str, Any] | None = None,
        options: PosteriorOptions | None = None,
        retrain_every: int | None = None,
        reselect: str | None = None,
        reselect_base: int = DEFAULT_RESELECT_BASE,
        candidate_size: int | None = 1000,
        random_state: int | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        storage: StorageOptions | None = None,
        meta: Mapping[str, Any] | None = None,
        background: bool = True,
        **storage_options: Any,
    ) -> None:
        x = as_features(features, name="pool features", dtype=torch.float64)
        if x.shape[0] == 0:
            raise InvalidInputError("pool features are empty; need at least one instance")
        if isinstance(strategy, Strategy):
            strat_obj = _resolve_strategy(strategy, {})
            strat_cfg = {"name": getattr(strategy, "name", type(strategy).__name__), "kwargs": {}, "object": True}
        elif isinstance(strategy, str):
            strat_cfg = {"name": strategy, "kwargs": dict(strategy_kwargs or {}), "object": False}
        else:
            raise InvalidInputError(f"strategy must be a name or a QueryStrategy, got {strategy!r}")
        header = new_header(x, class_names, strategy=strat_cfg, options=options, retrain_every=retrain_every,
                            candidate_size=candidate_size, random_state=random_state, meta=meta,
                            reselect=RefitPolicy(retrain_every, reselect, reselect_base).header_field())
        if not strat_cfg["object"]:
            strat_obj = _resolve_strategy(strategy, strat_cfg["kwargs"])  # type: ignore[arg-type]
        self._setup(header, x, items, strat_obj, StorageOptions.build(storage, storage_options), background)
        if state_dir is not None:
            self._state_dir = Path(state_dir)
            self._engine.store = SessionStore.create(self._state_dir, header, self._options)
            try:
                self._engine.snapshot(sync=True)
            except BaseException:
                self._engine.store.close()
                raise

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
        return cls(dataset.train_features, list(dataset.class_names), meta=meta, **kwargs)

    def _setup(self, header: dict[str, Any], x: torch.Tensor, items: Sequence[Any] | None,
               strategy: QueryStrategy, options: StorageOptions, background: bool) -> None:
        if items is not None and len(items) != x.shape[0]:
            raise InvalidInputError(f"items has {len(items)} entries but the pool has {x.shape[0]} rows")
        self._header = check_header(header, "the session header")  # complete, before any setting is used
        self._x = x
        self.items = items
        self._strategy = strategy
        self._names: list[str] = list(header["class_names"])
        self._seed = int(header["seed"])
        self._candidate_size: int | None = header["candidate_size"]
        self._options = options
        try:  # the settings come from a file: a bad one is a corrupt header, not a TypeError
            self._replay = PosteriorReplay(x, len(self._names), seed=self._seed, options=saved_options(header))
            self._book = LabelBook(self._names, x.shape[0])  # labels, skipped, history, redo
            self._policy = RefitPolicy.from_header(header)
            self._state = SessionState(self._header, self._replay, self._book, options.undo_cache,
                                       background=bool(background), on_refit=self._refitted)
        except (TypeError, ValueError) as err:
            raise CorruptStateError(f"the session header holds settings this version cannot use ({err}); "
                                    "it was edited or written by another version") from err
        self._signals = StoppingSignals(x, self._seed)
        self._state_dir: Path | None = None
        self._engine = LabelingEngine(self._state)  # in memory until a directory is attached
        self.recovery_notes: list[str] = []  # what Session.recover did to the files, one line each

    # ------------------------------------------------------------------ resume / recover
    @classmethod
    def resume(
        cls,
        state_dir: str | os.PathLike[str],
        features: Any,
        *,
        items: Sequence[Any] | None = None,
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
        items : sequence of length N, optional
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
        items: Sequence[Any] | None = None,
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
    def _open(cls, state_dir: str | os.PathLike[str], features: Any, items: Sequence[Any] | None,
              strategy: str | QueryStrategy | None, options: StorageOptions, *, recover: bool,
              drop_damaged: bool = False, background: bool = True) -> Session:
        """Lock, plan, rebuild from the plan's events, then (only then) touch the files."""
        path = Path(state_dir)
        x = as_features(features, name="pool features", dtype=torch.float64)
        store = SessionStore.lock(path, options)
        try:
            plan = store.plan(recover=recover, drop_damaged=drop_damaged)  # under the lock: cannot go stale
            check_features(plan.header, x, path)
            self = cls.__new__(cls)
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
            return _resolve_strategy(strategy, {})
        if strategy is not None:
            raise InvalidInputError(f"strategy must be a name, a QueryStrategy or None, got {strategy!r}")
        saved = header["strategy"]
        if saved.get("object"):
            raise InvalidInputError(
                f"the session in {state_dir} used a strategy object ({saved['name']!r}); pass strategy= to resume"
            )
        return _resolve_strategy(saved["name"], saved.get("kwargs", {}))

    def _record(self, ev: dict[str, Any]) -> None:
        """Validate, compute, log durably, commit (the engine's write path): every user action."""
        ev["t"] = round(time.time(), 3)
        with self._state.lock:  # a background refit swaps in under the same lock
            self._engine.record(ev)

    def _refitted(self) -> None:
        """After a background refit was swapped in (under the lock): the snapshot it held back."""
        self._engine.snapshot_if_due()

    # ------------------------------------------------------------------ lifetime
    def flush(self) -> None:
        """Write the snapshot now (synchronously), after any background write; while a refit is
        pending there is none to write (it is written once the refit lands)."""
        with self._state.lock:
            self._engine.snapshot(sync=True)

    def close(self) -> None:
        """Wait for a pending refit, flush the snapshot, stop the threads and release the directory
        lock (idempotent). A refit that failed leaves the last snapshot as it was (the log holds every
        event)."""
        try:
            if self._engine.is_open:
                try:
                    self._state.wait_refit()
                except Exception:  # noqa: BLE001 - its error was the caller's to collect; resume replays the log
                    pass
        finally:
            self._state.close()
            with self._state.lock:
                self._engine.close()

    def wait_refit(self, timeout: float | None = None) -> bool:
        """Wait until a background refit (if one is pending) is swapped in.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait at most (None: until it is done).

        Returns
        -------
        bool
            True if no refit is pending any more.

        Raises
        ------
        Exception
            The error the refit failed with (the posterior then stays the interim one until the next
            fit point).
        """
        return self._state.wait_refit(timeout)

    @property
    def refit_pending(self) -> bool:
        """True while a background refit has not been swapped in yet."""
        return self._state.pending is not None

    @property
    def refits_swapped(self) -> int:
        """How many background refits were swapped in since the session was opened (the posterior
        changed without an action: caches of what it gives are stale)."""
        return self._state.swaps

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ actions
    def tell(self, index: int, label: int | str) -> None:
        """Record the answer ``label`` for pool ``index`` and update the posterior.

        Any unlabeled index is accepted (not only the last queried; a skipped one is un-skipped).
        Returns after the label is durably logged. May be a fit point of the refit policy
        (``retrain_every``, ``reselect``): then the head is refit, in the background by default.

        Parameters
        ----------
        index : int
            Pool position in ``[0, N)``.
        label : int or str
            Class name or class index.

        Raises
        ------
        InvalidInputError
            Bad index or label, or ``index`` is already labeled (use :meth:`correct`).
        StorageError
            The label could not be logged; nothing was recorded.
        """
        i = self._book.check_index(index)
        c = self._book.check_label(label)
        if i in self._book.labels:
            raise InvalidInputError(
                f"index {i} is already labeled as {self._names[self._book.labels[i]]!r}; use correct() to change it"
            )
        ev: dict[str, Any] = {"op": "tell", "index": i, "label": c, "name": self._names[c]}
        if i in self._book.skipped:
            ev["was_skipped"] = True
        if self._policy.due(self._book, c):
            ev["retrain"] = True
        self._record(ev)

    def skip(self, index: int) -> None:
        """Mark pool ``index`` as skipped: it is no longer queried (``tell`` still accepts it).

        Parameters
        ----------
        index : int
            An unlabeled, unskipped pool position.
        """
        self._record({"op": "skip", "index": self._book.check_index(index)})

    def correct(self, index: int, new_label: int | str) -> None:
        """Change the label of an already labeled ``index``; the posterior mean is shifted accordingly.

        Parameters
        ----------
        index : int
            A labeled pool position.
        new_label : int or str
            The new class (name or index); the same label is a no-op.
        """
        i = self._book.check_index(index)
        c = self._book.check_label(new_label)
        if i not in self._book.labels:
            raise InvalidInputError(f"index {i} is not labeled yet; use tell()")
        if self._book.labels[i] == c:
            return
        self._record({"op": "correct", "index": i, "label": c, "old": self._book.labels[i], "name": self._names[c]})

    def undo(self) -> dict[str, Any]:
        """Undo the last action (tell, skip, correct or retrain).

        Returns
        -------
        dict
            The undone action (``op``, and ``index`` / ``label`` where it has them).

        Raises
        ------
        InvalidInputError
            There is nothing to undo.
        """
        if not self._book.history:
            raise InvalidInputError("nothing to undo")
        action = dict(self._book.history[-1])
        self._record({"op": "undo"})
        return action

    def redo(self) -> dict[str, Any]:
        """Re-apply the last undone action.

        Returns
        -------
        dict
            The redone action.

        Raises
        ------
        InvalidInputError
            There is nothing to redo (a new action clears the redo stack).
        """
        if not self._book.redo:
            raise InvalidInputError("nothing to redo")
        action = dict(self._book.redo[-1])
        self._record({"op": "redo"})
        return action

    def retrain(self) -> None:
        """Train the head from scratch on all labels (``options.head``) and rebuild the Laplace posterior
        (in the background with ``background=True``: :meth:`wait_refit` waits for it).

        Raises
        ------
        InvalidInputError
            Fewer than 2 classes are labeled.
        """
        self._record({"op": "retrain"})

    # ------------------------------------------------------------------ queries
    def available_indices(self) -> np.ndarray:
        """Sorted pool indices that are neither labeled nor skipped.

        Returns
        -------
        ndarray of shape (n,)
        """
        mask = np.ones(self._x.shape[0], dtype=bool)
        if self._book.labels:
            mask[np.fromiter(self._book.labels.keys(), dtype=np.int64)] = False
        if self._book.skipped:
            mask[np.fromiter(self._book.skipped, dtype=np.int64)] = False
        return np.flatnonzero(mask)

    @property
    def cold_start(self) -> bool:
        """True while fewer than 2 classes have been labeled: queries are then random."""
        return len(set(self._book.labels.values())) < 2

    def query(self, k: int = 1) -> list[int]:
        """Pool indices to label next.

        Random while :attr:`cold_start`; else the strategy scores a random subset of ``candidate_size``
        unlabeled, unskipped instances under the current posterior (the selection step of the
        experiment loop, :func:`bayesal.strategies.select`). Deterministic given the seed and the
        events so far.

        Parameters
        ----------
        k : int, default 1
            How many instances.

        Returns
        -------
        list of int
            ``k`` pool indices (fewer if the pool is nearly exhausted; ``[]`` when done).
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidInputError(f"k must be a positive integer, got {k!r}")
        avail = self.available_indices()
        if avail.size == 0:
            return []
        k = min(int(k), int(avail.size))
        gen = torch.Generator().manual_seed(derive_seed(self._seed, "query", len(self._state.events)))
        available = torch.zeros(self._x.shape[0], dtype=torch.bool)
        available[torch.from_numpy(avail)] = True
        lab_idx = sorted(self._book.labels)
        labeled = LabeledSet(
            features=self._x[lab_idx], labels=torch.tensor([self._book.labels[i] for i in lab_idx], dtype=torch.long)
        )
        if self.cold_start:  # uniformly among all available instances
            strategy, candidate_size = RandomSampling(), None
        else:
            strategy, candidate_size = self._strategy, self._candidate_size
        picks = select(strategy, self._state.posterior.copy(), self._x, available, labeled, k, gen,
                       candidate_size=candidate_size)
        return [int(i) for i in picks]

    def predict_proba(self, indices: Iterable[int] | None = None) -> torch.Tensor:
        """Mean-field predictive of the current posterior.

        Parameters
        ----------
        indices : iterable of int, optional
            Pool positions (all ``N`` if None).

        Returns
        -------
        Tensor of shape (n, C)
        """
        if indices is None:
            return self._state.posterior.predict_proba(self._x)
        idx = [self._book.check_index(i) for i in indices]
        return self._state.posterior.predict_proba(self._x[idx])

    def stopping_signals(self, window: int = 10, reference_size: int = 2000) -> dict[str, Any]:
        """Signals that tell whether more labels are worth it (see :mod:`bayesal.labeling.signals`).

        Measured on a fixed random reference subset of the pool and compared with earlier calls (an
        in-memory trace; after a resume the point ``window`` labels back is replayed).

        Parameters
        ----------
        window : int, default 10
            Labels spanned by the comparison.
        reference_size : int, default 2000
            Size of the reference subset (fixed at the first call).

        Returns
        -------
        dict
            ``n_labels``, ``expected_accuracy``, ``gain_per_label``, ``flips``, ``flip_rate``,
            ``window_labels``, ``reference_size``.
        """
        return self._signals.measure(self._state.posterior, self._book.history, self._replay.replay,
                                     window=window, reference_size=reference_size)

    # ------------------------------------------------------------------ read-only state
    @property
    def state_dir(self) -> Path | None:
        """The session's directory (None for an in-memory session)."""
        return self._state_dir

    @property
    def storage(self) -> StorageOptions:
        """How the state is kept."""
        return self._options

    @property
    def posterior(self) -> LastLayerLaplace:
        """The current posterior (do not modify it in place)."""
        return self._state.posterior

    @property
    def class_names(self) -> list[str]:
        """The ``C`` class names."""
        return list(self._names)

    @property
    def num_classes(self) -> int:
        """``C``."""
        return len(self._names)

    @property
    def features(self) -> torch.Tensor:
        """Pool features ``(N, D)`` float64."""
        return self._x

    @property
    def labels(self) -> dict[int, int]:
        """``{pool index: class index}`` of the current labels (in labeling order)."""
        return dict(self._book.labels)

    @property
    def named_labels(self) -> dict[int, str]:
        """``{pool index: class name}`` of the current labels."""
        return {i: self._names[c] for i, c in self._book.labels.items()}

    @property
    def skipped(self) -> set[int]:
        """Skipped pool indices."""
        return set(self._book.skipped)

    @property
    def n_labeled(self) -> int:
        """Number of labeled instances."""
        return len(self._book.labels)

    @property
    def history(self) -> list[dict[str, Any]]:
        """Effective actions (after undo/redo), oldest first."""
        return [dict(a) for a in self._book.history]

    @property
    def events(self) -> list[dict[str, Any]]:
        """All logged events (including undo/redo), oldest first."""
        return [dict(e) for e in self._state.events]

    @property
    def can_undo(self) -> bool:
        """True if there is an action to undo."""
        return bool(self._book.history)

    @property
    def can_redo(self) -> bool:
        """True if there is an undone action to redo."""
        return bool(self._book.redo)

    def replay(self, history: Sequence[Mapping[str, Any]] | None = None) -> LastLayerLaplace:
        """The posterior an action history replays to (synchronously; the current history if None):
        the refit at its last fit point plus the updates after it — what a resume gives.

        Parameters
        ----------
        history : sequence of dict, optional
            Effective actions as in :attr:`history`.

        Returns
        -------
        LastLayerLaplace
        """
        return self._replay.replay(self.history if history is None else [dict(a) for a in history])

    @property
    def refit_policy(self) -> RefitPolicy:
        """When the head is refit (the saved ``retrain_every`` and ``reselect``)."""
        return self._policy

    @property
    def options(self) -> PosteriorOptions:
        """The posterior's settings (as saved in the header)."""
        return self._replay.options

    @property
    def config(self) -> dict[str, Any]:
        """The saved configuration (the log header)."""
        return copy.deepcopy(self._header)

    @property
    def seed(self) -> int:
        """The session's seed."""
        return self._seed

    def __repr__(self) -> str:
        where = f", state_dir={str(self._state_dir)!r}" if self._state_dir is not None else ""
        return (
            f"Session(N={self._x.shape[0]}, D={self._x.shape[1]}, C={len(self._names)}, "
            f"labeled={len(self._book.labels)}, skipped={len(self._book.skipped)}, "
            f"strategy={self._header['strategy']['name']!r}{where})"
        )

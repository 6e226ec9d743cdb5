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

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bayesal.exceptions import CorruptStateError, InvalidInputError, StateMismatchError
from bayesal.laplace import PosteriorOptions
from bayesal.strategies import QueryStrategy, Strategy
from bayesal.utils import as_features

from .classes import append_class, check_new_class
from .config import feature_hash, new_header, saved_options, saved_prior_mean
from .engine import LabelingEngine
from .history import LabelBook
from .opening import SessionOpening, resolve_strategy
from .policy import DEFAULT_RESELECT_BASE, RefitPolicy
from .queries import SessionQueries
from .replay import PosteriorReplay
from .review import SessionReview
from .schema import MAX_USER, check_header
from .signals import DEFAULT_STOP_GAIN, StoppingSignals
from .state import SessionState
from .storage import LOG_NAME, STATE_NAME
from .store import SessionStore, StorageOptions

__all__ = [
    "Session", "StorageOptions", "CorruptStateError", "StateMismatchError", "feature_hash",
    "LOG_NAME", "STATE_NAME",
]


class Session(SessionOpening, SessionQueries, SessionReview):
    """Pool-based labeling session with immediate Bayesian updates and crash-safe persistence.

    Parameters
    ----------
    features : array-like of shape (N, D)
        Pool features (numpy or torch; must be finite).
    class_names : sequence of str or int
        The ``C ≥ 2`` class names (labels may be given as a name or as an index into this list), or
        the number of classes ``C`` (names ``"0" … "C-1"``).
    items : sequence or array of length N, optional
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
    cold_start : {"random", "cover"}, default "random"
        How queries pick before the labels are informative (saved): ``"random"`` picks at random until
        two classes are labeled; ``"cover"`` picks typical, diverse items (TypiClust on the pool's
        features) until every class has a label (or there are 5 labels per class), for a session
        that starts from zero labels.
    prior_mean : array-like of shape (C, D), optional
        The mean ``M₀`` of the head's prior ``N(M₀, λ₀⁻¹ I)`` (saved in the header): e.g. a zero-shot head
        made of the class names' embeddings (:func:`bayesal.data.zero_shot_head`). The posterior before
        the first label is that prior, so the first query's prediction is its guess; every refit is
        centred on it. None: the zero-mean prior.
    audit_rate : float, default 0
        The probability in ``[0, 1)`` that a query is an *audit* pick: an item drawn uniformly at random
        from the available ones instead of the strategy's (saved). Its answer is logged as an audit
        label with the model's prediction before the label is absorbed; :meth:`estimate` corrects the
        model's own accuracy estimate with them (see :mod:`bayesal.labeling.signals`).
    stop_when_gain_below : float, optional
        :meth:`estimate` recommends stopping once the expected accuracy gain of the next 50 labels (at
        most the share of the predictions they change, at the rate of the last half of the labels) is
        below this (default 0.02; None: no recommendation). Not saved: the attribute of the same name
        may be set at any time.
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
        items: Sequence[Any] | np.ndarray | None = None,
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
        cold_start: str = "random",
        prior_mean: Any = None,
        audit_rate: float = 0.0,
        stop_when_gain_below: float | None = DEFAULT_STOP_GAIN,
        **storage_options: Any,
    ) -> None:
        x = as_features(features, name="pool features", dtype=torch.float64)
        if x.shape[0] == 0:
            raise InvalidInputError("pool features are empty; need at least one instance")
        if isinstance(strategy, Strategy):
            strat_obj = resolve_strategy(strategy, {})
            strat_cfg: dict[str, Any] = {"name": getattr(strategy, "name", type(strategy).__name__), "kwargs": {}, "object": True}
        elif isinstance(strategy, str):
            strat_cfg = {"name": strategy, "kwargs": dict(strategy_kwargs or {}), "object": False}
        else:
            raise InvalidInputError(f"strategy must be a name or a QueryStrategy, got {strategy!r}")
        header = new_header(x, class_names, strategy=strat_cfg, options=options, retrain_every=retrain_every,
                            candidate_size=candidate_size, random_state=random_state, meta=meta,
                            reselect=RefitPolicy(retrain_every, reselect, reselect_base).header_field(),
                            cold_start=cold_start, prior_mean=prior_mean, audit_rate=audit_rate)
        if isinstance(strategy, str):  # a name: resolved once the header has checked the other settings
            strat_obj = resolve_strategy(strategy, strat_cfg["kwargs"])
        self._setup(header, x, items, strat_obj, StorageOptions.build(storage, storage_options), background)
        self.stop_when_gain_below = stop_when_gain_below
        if state_dir is not None:
            self._state_dir = Path(state_dir)
            self._engine.store = SessionStore.create(self._state_dir, header, self._options)
            try:
                self._engine.snapshot(sync=True)
            except BaseException:
                self._engine.store.close()
                raise

    def _setup(self, header: dict[str, Any], x: torch.Tensor, items: Sequence[Any] | np.ndarray | None,
               strategy: QueryStrategy, options: StorageOptions, background: bool) -> None:
        if items is not None and len(items) != x.shape[0]:
            raise InvalidInputError(f"items has {len(items)} entries but the pool has {x.shape[0]} rows")
        self._header = check_header(header, "the session header")  # complete, before any setting is used
        self._x = x
        self.items = items
        self._strategy = strategy
        self._names = list(header["class_names"])
        self._seed = int(header["seed"])
        self._candidate_size = header["candidate_size"]
        self._options = options
        try:  # the settings come from a file: a bad one is a corrupt header, not a TypeError
            self._replay = PosteriorReplay(x, len(self._names), seed=self._seed, options=saved_options(header),
                                           prior_mean=saved_prior_mean(header))
            self._book = LabelBook(self._names, x.shape[0])  # labels, skipped, history, redo
            self._policy = RefitPolicy.from_header(header)
            self._state = SessionState(self._header, self._replay, self._book, options.undo_cache,
                                       background=bool(background), on_refit=self._refitted)
        except (TypeError, ValueError) as err:
            raise CorruptStateError(f"the session header holds settings this version cannot use ({err}); "
                                    "it was edited or written by another version") from err
        self._signals = StoppingSignals(x, self._seed)
        self.stop_when_gain_below: float | None = DEFAULT_STOP_GAIN
        self._state_dir = None
        self._engine = LabelingEngine(self._state)  # in memory until a directory is attached
        self.recovery_notes = []  # what Session.recover did to the files, one line each

    # ------------------------------------------------------------------ the write path
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

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ actions
    def tell(self, index: int, label: int | str, *, user: str | None = None) -> None:
        """Record the answer ``label`` for pool ``index`` and update the posterior.

        Any unlabeled index is accepted (not only the last queried; a skipped one is un-skipped). With
        an audit stream, the answer to the current audit pick (:meth:`audit_pick`) is logged as an
        audit label, with the class the model predicted for it before the label and its probability.
        Returns after the label is durably logged. May be a fit point of the refit policy
        (``retrain_every``, ``reselect``): then the head is refit, in the background by default.

        Parameters
        ----------
        index : int
            Pool position in ``[0, N)``.
        label : int or str
            Class name or class index.
        user : str, optional
            Who answered (saved with the answer, for exports).

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
        if user:
            ev["user"] = _check_user(user)
        if i in self._book.skipped:
            ev["was_skipped"] = True
        if self._policy.due(self._book, c):
            ev["retrain"] = True
        self._mark_audit(ev)
        self._record(ev)

    def skip(self, index: int) -> None:
        """Mark pool ``index`` as skipped: it is no longer queried (``tell`` still accepts it).

        Parameters
        ----------
        index : int
            An unlabeled, unskipped pool position.
        """
        self._record({"op": "skip", "index": self._book.check_index(index)})

    def correct(self, index: int, new_label: int | str, *, user: str | None = None) -> None:
        """Change the label of an already labeled ``index``; the posterior mean is shifted accordingly.

        Parameters
        ----------
        index : int
            A labeled pool position.
        new_label : int or str
            The new class (name or index); the same label is a no-op.
        user : str, optional
            Who corrected it (saved with the correction).
        """
        i = self._book.check_index(index)
        c = self._book.check_label(new_label)
        if i not in self._book.labels:
            raise InvalidInputError(f"index {i} is not labeled yet; use tell()")
        if self._book.labels[i] == c:
            return
        ev: dict[str, Any] = {"op": "correct", "index": i, "label": c, "old": self._book.labels[i], "name": self._names[c]}
        if user:
            ev["user"] = _check_user(user)
        self._record(ev)

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

    @property
    def has_prior_mean(self) -> bool:
        """Whether the head's prior has a mean (e.g. a zero-shot head): then the predictions before any
        label are its guesses, not a uniform distribution."""
        return self._header.get("prior_mean") is not None

    def add_class(self, name: str, prior_row: Sequence[float] | None = None) -> None:
        """Add a class after the existing ones; every label, skip and setting is kept.

        The session is closed, its saved header gains the class (:mod:`bayesal.labeling.classes`) and
        it is reopened in place from its log: the posterior grows a row, which starts at the prior
        (no label names the class yet). Pending background work is finished first.

        Parameters
        ----------
        name : str
            The new class's name (not one of :attr:`class_names`).
        prior_row : sequence of float, optional
            With a prior mean: the new class's row of it ``(D,)`` (e.g. its name's zero-shot row);
            zeros if None.

        Raises
        ------
        InvalidInputError
            An empty or existing name, or a session without a directory (an in-memory session has no
            log to replay).
        """
        check_new_class(name, self._names)
        if self._state_dir is None:
            raise InvalidInputError("adding a class reopens the session from its log; an in-memory session has none "
                                    "(create it with state_dir=...)")
        path, x, items, strategy = self._state_dir, self._x, self.items, self._strategy
        options, background = self._options, self._state.background
        self.close()
        append_class(path, name, fsync=options.fsync, prior_row=prior_row)
        reopened = type(self).resume(path, x, items=items, strategy=strategy, storage=options, background=background)
        self.__dict__.update(reopened.__dict__)  # the same object, now over the longer class list

    def retrain(self) -> None:
        """Train the head from scratch on all labels (``options.head``) and rebuild the Laplace posterior
        (in the background with ``background=True``: :meth:`wait_refit` waits for it).

        Raises
        ------
        InvalidInputError
            Fewer than 2 classes are labeled.
        """
        self._record({"op": "retrain"})


def _check_user(user: Any) -> str:
    """An annotator's name as saved with an answer: a short string."""
    if not isinstance(user, str) or len(user) > MAX_USER:
        raise InvalidInputError(f"user must be a name of at most {MAX_USER} characters, got {user!r}")
    return user

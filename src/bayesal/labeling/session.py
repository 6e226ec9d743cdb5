"""Interactive active-learning session: query, tell, undo, retrain — crash-safe (GitHub issue #5).

A :class:`Session` holds a pool of features ``(N, D)``, the class names, a query strategy and a
:class:`~bayesal.laplace.posterior.LastLayerLaplace` posterior. Every answer is absorbed immediately with the
closed-form Bayesian update (SPEC §4, milliseconds); :meth:`Session.retrain` refits the head from
scratch, automatically every ``retrain_every`` labels if configured.

Design
------
**Event sourcing.** Everything the user does is an *event* — ``tell``, ``skip``, ``correct``, ``retrain``,
``undo``, ``redo`` — appended to the label log (``labels.jsonl``, see :mod:`bayesal.labeling.storage`) and
fsync-ed *before* the call returns. The session state is a deterministic function of the log:
folding the events gives the effective action history (undo pops an action onto a redo stack, redo
pushes it back, any new action clears the redo stack), and from the history the posterior follows:

* start from the last fit point in the history (a ``retrain`` or a ``tell`` that triggered the automatic
  retrain) — the head trained from scratch on the labels at that point, seeded by ``(seed, position)`` —
  or from the zero-mean prior ``N(0, λ₀⁻¹ I)`` if there was none;
* then every later ``tell`` is one Bayesian update with ``γ = gamma``, every ``correct`` the mean shift
  ``μ ← μ + γ Σ (e_new − e_old) φᵀ`` (the Newton step that swaps the old label's likelihood term for the
  new one; with the "gaussian" curvature the Hessian of a point does not depend on its label, so ``Σ``
  is unchanged) and ``skip`` changes nothing.

**Undo** restores the posterior kept from before the undone action (a bounded in-memory cache of the
last ``undo_cache`` posteriors; they are never modified in place, so keeping them costs no copy). If the
cache does not reach that far back (e.g. after a resume) the posterior is recomputed from the last fit
point plus a replay of the updates after it — the same result, computed more slowly.

**Persistence** in ``state_dir``: ``labels.jsonl`` is the source of truth; its first line is a header with
the configuration (class names, feature hash, seed, strategy, posterior and head settings). Every label
costs one small fsync-ed line. ``session.state`` is a snapshot (header, events, labels, skipped, RNG
state = seed + event count, and the posterior tensors, 1.2 MB for D=384) replaced atomically after every ``snapshot_every`` events — in a background thread by default
(``async_snapshot=True``), coalescing to the latest state, so ``tell`` waits only for the log line. The
snapshot is only a cache for fast resume: :meth:`Session.resume` loads it and replays the log events it
does not yet contain; :meth:`Session.recover` rebuilds the session from whichever copy of the events
is intact (the log, or the snapshot where the log is damaged or missing; see
:mod:`bayesal.labeling.recovery`). Hence no acknowledged label is lost, whatever moment the process dies at.

**Randomness.** There is no mutable RNG to save: the randomness of each query is drawn from a generator
seeded by ``(seed, number of events so far)`` and each head fit by ``(seed, position in the history)``.
The saved "RNG state" is the seed plus the log. Two sessions with the same seed and the same answers
make identical queries, a resumed/recovered session continues exactly as the original would have, and
calling :meth:`query` twice without answering returns the same instances.
"""

from __future__ import annotations

import copy
import hashlib
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bayesal.exceptions import StateMismatchError
from bayesal.laplace.head import HeadConfig
from bayesal.laplace.posterior import LastLayerLaplace
from bayesal.strategies import get_strategy
from bayesal.strategies.base import LabeledSet, QueryStrategy
from bayesal.utils.rng import derive_seed
from bayesal.utils.validation import as_features

from .history import LabelBook
from .recovery import (
    FORMAT_VERSION,
    LOG_NAME,
    STATE_NAME,
    TORN_NOTE,
    SnapshotWriter,
    carry_out,
    plan_recovery,
    read_session_log,
)
from .storage import CorruptStateError, DirectoryLock, LabelLog, LogLockedError, load_snapshot, save_snapshot

__all__ = ["Session", "CorruptStateError", "StateMismatchError", "LogLockedError", "feature_hash"]

ACTIONS = ("tell", "skip", "correct", "retrain")
POSTERIOR_KEYS = ("prior_precision", "curvature", "hessian", "lambda_mf")




def feature_hash(features: torch.Tensor) -> str:
    """BLAKE2b digest of the pool features ``(N, D)`` as float64 (independent of the input dtype)."""
    arr = np.ascontiguousarray(features.detach().cpu().to(torch.float64).numpy())
    h = hashlib.blake2b(digest_size=16)
    h.update(repr(arr.shape).encode())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


def _lock_dir(state_dir: Path) -> DirectoryLock:
    """Lock an existing session directory (``FileNotFoundError`` if there is none)."""
    if not state_dir.is_dir():
        raise FileNotFoundError(f"no label log {state_dir / LOG_NAME}; is {state_dir} a session directory?")
    return DirectoryLock(state_dir)


def _resolve_strategy(name: str, kwargs: Mapping[str, Any]) -> QueryStrategy | None:
    """``None`` for 'random' (handled by the session), else a strategy from the factory."""
    if name == "random" and not kwargs:
        return None
    return get_strategy(name, **dict(kwargs))


class Session:
    """Pool-based labeling session with immediate Bayesian updates and crash-safe persistence.

    Parameters
    ----------
    features:
        Pool features ``(N, D)`` (numpy or torch; must be finite).
    class_names:
        The ``C ≥ 2`` class names (labels may be given as a name or as an index into this list), or the
        number of classes ``C`` (names ``"0" … "C-1"``).
    items:
        Optional sequence of length ``N`` with what a person labels (texts, images); display only,
        never saved.
    strategy:
        Strategy name for ``bayesal.strategies.get_strategy`` (``"random"`` is built in), or a
        :class:`QueryStrategy` object (then it must be passed again to :meth:`resume`).
    strategy_kwargs:
        Keyword arguments for the factory (saved).
    posterior_config:
        Keyword arguments of :class:`LastLayerLaplace`: ``prior_precision``, ``curvature``, ``hessian``,
        ``lambda_mf``. Computations use float64 on the CPU.
    head_config:
        :class:`HeadConfig` of :meth:`retrain` (the paper's 200 epochs by default).
    gamma:
        Step size ``γ`` of the Bayesian update, of label corrections and of every update a strategy
        simulates (it is the posterior's); None: :class:`LastLayerLaplace`'s default (10, the paper's).
    retrain_every:
        Retrain the head from scratch after this many new labels (None: only on :meth:`retrain`).
        Needs labels of at least 2 classes.
    candidate_size:
        Each query scores a random subset of this many unlabeled instances (1000 as in the paper);
        None scores the whole unlabeled pool.
    random_state:
        Integer seed (None draws one; it is saved either way).
    state_dir:
        Directory for the label log and snapshot (created; must not hold a session yet). None keeps
        the session in memory only.
    fsync:
        fsync log lines and snapshots (turn off only for benchmarks/tests).
    snapshot_every:
        Write the snapshot after this many events (the log alone is always sufficient to recover).
    async_snapshot:
        Write snapshots in a background thread so that :meth:`tell` waits only for the log line.
    snapshot_interval:
        Minimum seconds between two background snapshots (the latest state is written once it has
        passed; :meth:`flush` / :meth:`close` write at once). Labels given by a person are seconds
        apart, so each gets its snapshot; scripted bursts coalesce.
    undo_cache:
        How many previous posteriors are kept in memory for instant :meth:`undo`.
    meta:
        JSON-serializable extra information saved in the header (e.g. the dataset name).
    """

    def __init__(
        self,
        features: Any,
        class_names: Sequence[str] | int,
        *,
        items: Sequence[Any] | None = None,
        strategy: str | QueryStrategy = "margin",
        strategy_kwargs: Mapping[str, Any] | None = None,
        posterior_config: Mapping[str, Any] | None = None,
        head_config: HeadConfig | None = None,
        gamma: float | None = None,
        retrain_every: int | None = None,
        candidate_size: int | None = 1000,
        random_state: int | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        fsync: bool = True,
        snapshot_every: int = 1,
        async_snapshot: bool = True,
        snapshot_interval: float = 0.2,
        undo_cache: int = 32,
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        x = as_features(features, name="pool features", dtype=torch.float64)
        if x.shape[0] == 0:
            raise ValueError("pool features are empty; need at least one instance")
        names = self._check_class_names(class_names)
        if retrain_every is not None and (not isinstance(retrain_every, int) or retrain_every < 1):
            raise ValueError(f"retrain_every must be a positive integer or None, got {retrain_every!r}")
        if candidate_size is not None and (not isinstance(candidate_size, int) or candidate_size < 1):
            raise ValueError(f"candidate_size must be a positive integer or None, got {candidate_size!r}")
        pcfg = dict(posterior_config or {})
        unknown = set(pcfg) - set(POSTERIOR_KEYS)
        if unknown:
            raise ValueError(f"unknown posterior_config keys {sorted(unknown)}; allowed: {POSTERIOR_KEYS}")
        # validates the values; the posterior owns γ's default
        gamma = LastLayerLaplace(**pcfg, **({} if gamma is None else {"gamma": gamma})).gamma
        hcfg = head_config or HeadConfig()
        if random_state is None:
            random_state = int.from_bytes(os.urandom(4), "little")
        if isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer)):
            raise ValueError(f"random_state must be an int or None, got {random_state!r}")
        if isinstance(strategy, QueryStrategy):
            strat_obj: QueryStrategy | None = strategy
            strat_cfg = {"name": getattr(strategy, "name", type(strategy).__name__), "kwargs": {}, "object": True}
        elif isinstance(strategy, str):
            strat_cfg = {"name": strategy, "kwargs": dict(strategy_kwargs or {}), "object": False}
            strat_obj = _resolve_strategy(strategy, strat_cfg["kwargs"])
        else:
            raise ValueError(f"strategy must be a name or a QueryStrategy, got {strategy!r}")
        header = {
            "op": "header",
            "seq": 0,
            "format": FORMAT_VERSION,
            "session_id": uuid.uuid4().hex,
            "created": round(time.time(), 3),
            "num_items": int(x.shape[0]),
            "num_features": int(x.shape[1]),
            "feature_hash": feature_hash(x),
            "class_names": names,
            "seed": int(random_state),
            "strategy": strat_cfg,
            "posterior": pcfg,
            "head": asdict(hcfg),
            "gamma": float(gamma),
            "retrain_every": retrain_every,
            "candidate_size": candidate_size,
            "meta": dict(meta or {}),
        }
        self._setup(header, x, items, strat_obj, fsync=fsync, snapshot_every=snapshot_every,
                    async_snapshot=async_snapshot, snapshot_interval=snapshot_interval, undo_cache=undo_cache)
        self._post = self._prior()
        if state_dir is not None:
            self._create_dir(Path(state_dir))

    # ------------------------------------------------------------------ construction helpers
    @classmethod
    def from_dataset(cls, dataset: Any, **kwargs: Any) -> Session:
        """Session over ``dataset.train_features`` with its class names and ``train_items``."""
        meta = dict(kwargs.pop("meta", None) or {})
        meta.setdefault("dataset", getattr(dataset, "name", None))
        kwargs.setdefault("items", getattr(dataset, "train_items", None))
        return cls(dataset.train_features, list(dataset.class_names), meta=meta, **kwargs)

    @staticmethod
    def _check_class_names(class_names: Sequence[str] | int) -> list[str]:
        if isinstance(class_names, (int, np.integer)) and not isinstance(class_names, bool):
            names = [str(c) for c in range(int(class_names))]
        else:
            names = [str(c) for c in class_names]
        if len(names) < 2:
            raise ValueError(f"need at least 2 classes, got {len(names)}")
        if len(set(names)) != len(names):
            raise ValueError(f"class names must be unique, got {names}")
        return names

    def _setup(
        self,
        header: dict[str, Any],
        x: torch.Tensor,
        items: Sequence[Any] | None,
        strategy: QueryStrategy | None,
        *,
        fsync: bool,
        snapshot_every: int,
        async_snapshot: bool,
        snapshot_interval: float,
        undo_cache: int,
    ) -> None:
        if not snapshot_interval >= 0:
            raise ValueError(f"snapshot_interval must be >= 0 seconds, got {snapshot_interval!r}")
        if items is not None and len(items) != x.shape[0]:
            raise ValueError(f"items has {len(items)} entries but the pool has {x.shape[0]} rows")
        if not isinstance(snapshot_every, int) or snapshot_every < 1:
            raise ValueError(f"snapshot_every must be a positive integer, got {snapshot_every!r}")
        if not isinstance(undo_cache, int) or undo_cache < 0:
            raise ValueError(f"undo_cache must be an integer >= 0, got {undo_cache!r}")
        self._header = header
        self._x = x
        self.items = items
        self._strategy = strategy
        self._names: list[str] = list(header["class_names"])
        self._seed = int(header["seed"])
        self._gamma = float(header["gamma"])
        self._retrain_every = header["retrain_every"]
        self._candidate_size = header["candidate_size"]
        self._pcfg = dict(header["posterior"])
        self._hcfg = HeadConfig(**header["head"])
        self._fsync = bool(fsync)
        self._snapshot_every = snapshot_every
        self._async_snapshot = bool(async_snapshot)
        self._snapshot_interval = float(snapshot_interval)
        self._undo_cache = undo_cache
        # event-sourced state
        self._events: list[dict[str, Any]] = []
        self._book = LabelBook(self._names, x.shape[0])  # labels, skipped, history, redo
        self._post_stack: list[LastLayerLaplace | None] = []
        self._prior_cache: LastLayerLaplace | None = None
        self._post: LastLayerLaplace
        # persistence
        self.state_dir: Path | None = None
        self._log: LabelLog | None = None
        self._dir_lock: DirectoryLock | None = None
        self._writer: SnapshotWriter | None = None
        self._log_error: OSError | None = None
        self._events_since_snapshot = 0
        self.recovery_notes: list[str] = []  # what Session.recover did to the files, one line each
        self._trace: list[tuple[int, float, torch.Tensor]] = []
        self._ref_idx: torch.Tensor | None = None

    def _create_dir(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        log_path = path / LOG_NAME

        def refuse_if_occupied() -> None:
            # a log without one complete line is a creation that died before its header was written:
            # nothing was acknowledged; anything more (even a damaged log) is kept and refused
            if (path / STATE_NAME).exists() or (log_path.exists() and b"\n" in log_path.read_bytes()):
                raise ValueError(
                    f"{path} already holds a labeling session; resume it (Session.resume({str(path)!r}, features), "
                    f"or bayesal label --resume {path}) or choose an empty directory"
                )

        refuse_if_occupied()
        lock = DirectoryLock(path)
        try:
            refuse_if_occupied()  # again under the lock
            if log_path.exists():
                log_path.unlink()
            self.state_dir = path
            self._log = LabelLog.create(path / LOG_NAME, self._header, fsync=self._fsync)
            self._write_snapshot(sync=True)
        except BaseException:
            lock.release()
            raise
        self._dir_lock = lock

    # ------------------------------------------------------------------ resume / recover
    @staticmethod
    def _check_features(header: Mapping[str, Any], x: torch.Tensor, state_dir: Path) -> None:
        shape = (header["num_items"], header["num_features"])
        if tuple(x.shape) != shape:
            raise StateMismatchError(
                f"the session in {state_dir} was created for pool features of shape {shape}, got {tuple(x.shape)}"
            )
        if feature_hash(x) != header["feature_hash"]:
            raise StateMismatchError(
                f"the pool features do not match the session in {state_dir}: feature hash mismatch "
                "(different data, order or preprocessing)"
            )

    @classmethod
    def _open_common(cls, state_dir: Path, features: Any, header: dict[str, Any], items: Any,
                     strategy: str | QueryStrategy | None, io_kwargs: dict[str, Any]) -> Session:
        x = as_features(features, name="pool features", dtype=torch.float64)
        cls._check_features(header, x, state_dir)
        strat_cfg = header["strategy"]
        if isinstance(strategy, QueryStrategy):
            strat_obj: QueryStrategy | None = strategy
        elif isinstance(strategy, str):
            strat_obj = _resolve_strategy(strategy, {})
        elif strategy is None:
            if strat_cfg.get("object"):
                raise ValueError(
                    f"the session in {state_dir} used a strategy object ({strat_cfg['name']!r}); pass strategy= to resume"
                )
            strat_obj = _resolve_strategy(strat_cfg["name"], strat_cfg.get("kwargs", {}))
        else:
            raise ValueError(f"strategy must be a name, a QueryStrategy or None, got {strategy!r}")
        self = cls.__new__(cls)
        self._setup(header, x, items, strat_obj, **io_kwargs)
        self.state_dir = state_dir
        return self

    @classmethod
    def resume(
        cls,
        state_dir: str | os.PathLike[str],
        features: Any,
        *,
        items: Sequence[Any] | None = None,
        strategy: str | QueryStrategy | None = None,
        fsync: bool = True,
        snapshot_every: int = 1,
        async_snapshot: bool = True,
        snapshot_interval: float = 0.2,
        undo_cache: int = 32,
    ) -> Session:
        """Reopen a session from its snapshot plus the log events the snapshot does not contain yet.

        Raises :class:`CorruptStateError` (a ``ValueError``) if the snapshot or log is damaged and
        :class:`StateMismatchError` if ``features`` are not the session's pool; :meth:`recover` rebuilds
        from whichever copy of the events is intact. ``strategy`` overrides the saved one.
        """
        state_dir = Path(state_dir)
        io_kwargs = dict(fsync=fsync, snapshot_every=snapshot_every, async_snapshot=async_snapshot,
                         snapshot_interval=snapshot_interval, undo_cache=undo_cache)
        lock = _lock_dir(state_dir)
        try:
            return cls._resume_locked(lock, state_dir, features, items, strategy, io_kwargs)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _resume_locked(cls, lock: DirectoryLock, state_dir: Path, features: Any, items: Any,
                       strategy: str | QueryStrategy | None, io_kwargs: dict[str, Any]) -> Session:
        state_path, log_path = state_dir / STATE_NAME, state_dir / LOG_NAME
        if not state_path.exists() and log_path.exists():
            # the snapshot is only a cache (e.g. the first one was never written): rebuild it from the log
            return cls._recover_locked(lock, state_dir, features, items, strategy, False, io_kwargs)
        if not state_path.exists():
            raise FileNotFoundError(f"no state file {state_path} and no label log; is {state_dir} a session directory?")
        if not log_path.exists():
            raise CorruptStateError(f"the label log {log_path} is missing; Session.recover() (bayesal label "
                                    f"--resume {state_dir} --recover) rebuilds it from the state file")
        snap = load_snapshot(state_path)
        try:
            snap_header, snap_events, post_state = snap["header"], list(snap["events"]), snap["posterior"]
        except KeyError as err:
            raise CorruptStateError(f"state file {state_path} is corrupt: missing entry {err}") from err
        header, log_events, valid_bytes = read_session_log(state_dir)
        if snap_header.get("session_id") != header.get("session_id"):
            raise CorruptStateError(f"state file {state_path} belongs to another session than the label log")
        n = min(len(snap_events), len(log_events))
        if snap_events[:n] != log_events[:n]:
            k = next(i for i in range(n) if snap_events[i] != log_events[i])
            raise CorruptStateError(
                f"state file {state_path} and label log disagree at event {k + 1}; use Session.recover()"
            )
        self = cls._open_common(state_dir, features, header, items, strategy, io_kwargs)
        self._dir_lock = lock
        try:
            # the header's step size wins (snapshots written before it was saved with the posterior)
            post = LastLayerLaplace.from_state_dict(post_state).with_update_options(gamma=self._gamma)
        except ValueError as err:
            raise CorruptStateError(f"state file {state_path} is corrupt: {err}") from err
        if (post.num_classes, post.num_features) != (len(self._names), self._x.shape[1]):
            raise CorruptStateError(f"state file {state_path} is corrupt: posterior shape does not match the header")
        # fold the snapshot's events (bookkeeping only), then replay the log's newer events fully
        for k, ev in enumerate(snap_events):
            self._fold(ev, where=f"state file event {k + 1}")
            self._events.append(ev)
        if (snap.get("labels", self._book.labels) != self._book.labels
                or set(snap.get("skipped", self._book.skipped)) != self._book.skipped):
            raise CorruptStateError(f"state file {state_path} is corrupt: its labels disagree with its events")
        self._post = post
        self._post_stack = [None] * len(self._book.history)
        if len(log_events) < len(snap_events):
            # only possible with fsync=False: the log lost lines the snapshot has; rewrite the log
            self._log = LabelLog.rewrite(state_dir / LOG_NAME, [header] + snap_events, fsync=io_kwargs["fsync"])
            self.recovery_notes.append("the label log lacked events the state file holds; rewrote it from them")
        else:
            if valid_bytes < log_path.stat().st_size:
                self.recovery_notes.append(TORN_NOTE)
            self._log = LabelLog.open(state_dir / LOG_NAME, valid_bytes, fsync=io_kwargs["fsync"])
        for k in range(len(snap_events), len(log_events)):
            self._apply(log_events[k], where=f"label log line {k + 2}")
            self._events.append(log_events[k])
        if len(log_events) > len(snap_events):
            self._write_snapshot(sync=True)
        return self

    @classmethod
    def recover(
        cls,
        state_dir: str | os.PathLike[str],
        features: Any,
        *,
        items: Sequence[Any] | None = None,
        strategy: str | QueryStrategy | None = None,
        drop_damaged: bool = False,
        fsync: bool = True,
        snapshot_every: int = 1,
        async_snapshot: bool = True,
        snapshot_interval: float = 0.2,
        undo_cache: int = 32,
    ) -> Session:
        """Rebuild a session by replaying its events (labels, corrections, skips, undo/redo, retrains)
        and write a fresh snapshot and, where needed, a fresh label log.

        The events come from the label log (a torn last line is dropped) or, where the log is damaged,
        missing or shorter, from the snapshot if it belongs to the same session and agrees with the log's
        intact part. A log damaged in the middle whose later events no snapshot holds is an error unless
        ``drop_damaged=True``, which keeps the events before the damage. Files that are replaced are kept
        aside (``labels.jsonl.damaged``, ``session.state.corrupt`` / ``.replaced``), never deleted, and
        only after the events replayed without error; :attr:`recovery_notes` says what was done.
        """
        state_dir = Path(state_dir)
        io_kwargs = dict(fsync=fsync, snapshot_every=snapshot_every, async_snapshot=async_snapshot,
                         snapshot_interval=snapshot_interval, undo_cache=undo_cache)
        lock = _lock_dir(state_dir)
        try:
            return cls._recover_locked(lock, state_dir, features, items, strategy, drop_damaged, io_kwargs)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _recover_locked(cls, lock: DirectoryLock, state_dir: Path, features: Any, items: Any,
                        strategy: str | QueryStrategy | None, drop_damaged: bool,
                        io_kwargs: dict[str, Any]) -> Session:
        plan = plan_recovery(state_dir, drop_damaged=drop_damaged)  # under the lock: cannot go stale
        self = cls._open_common(state_dir, features, plan.header, items, strategy, io_kwargs)
        self._dir_lock = lock
        where = "label log line {}" if not plan.rewrite_log else "event {}"
        for k, ev in enumerate(plan.events):
            self._fold(ev, where=where.format(k + 2 if not plan.rewrite_log else k + 1))
            self._events.append(ev)
        self._post = self._replay(self._book.history)
        self._post_stack = [None] * len(self._book.history)
        self._log = carry_out(plan, state_dir, fsync=io_kwargs["fsync"])
        self.recovery_notes = list(plan.notes)
        self._write_snapshot(sync=True)
        return self

    # ------------------------------------------------------------------ posterior construction
    def _new_posterior(self, **kwargs: Any) -> LastLayerLaplace:
        return LastLayerLaplace(**self._pcfg, gamma=self._gamma, dtype=torch.float64, head_config=self._hcfg, **kwargs)

    def _prior(self) -> LastLayerLaplace:
        """Zero-mean prior posterior ``N(0, λ₀⁻¹ I)`` (no data), shared — it is never modified."""
        if self._prior_cache is None:
            c, d = len(self._names), self._x.shape[1]
            self._prior_cache = self._new_posterior().fit(
                self._x[:0], torch.zeros(0, dtype=torch.long), weight=torch.zeros(c, d, dtype=torch.float64), num_classes=c
            )
        return self._prior_cache

    def _fit(self, labels: Mapping[int, int], position: int) -> LastLayerLaplace:
        """Head trained from scratch on ``labels`` (sorted by index) and its Laplace posterior."""
        idx = sorted(labels)
        y = torch.tensor([labels[i] for i in idx], dtype=torch.long)
        post = self._new_posterior(random_state=derive_seed(self._seed, "fit", position))
        return post.fit(self._x[idx], y, num_classes=len(self._names))

    def _transition(self, post: LastLayerLaplace, action: Mapping[str, Any], position: int,
                    labels_after: Mapping[int, int]) -> LastLayerLaplace:
        """Posterior after applying ``action`` at history ``position``."""
        op = action["op"]
        if op == "tell":
            if action.get("retrain"):
                return self._fit(labels_after, position)
            i = int(action["index"])
            return post.update(self._x[i : i + 1], torch.tensor([int(action["label"])]))
        if op == "correct":
            return post.relabel(self._x[int(action["index"])], int(action["old"]), int(action["label"]))
        if op == "retrain":
            return self._fit(labels_after, position)
        return post  # skip

    @staticmethod
    def _is_fit_point(action: Mapping[str, Any]) -> bool:
        return action["op"] == "retrain" or (action["op"] == "tell" and bool(action.get("retrain")))

    def _replay(self, history: Sequence[Mapping[str, Any]]) -> LastLayerLaplace:
        """Posterior of an action history: last fit point (or the prior) + the updates after it."""
        last = max((j for j, a in enumerate(history) if self._is_fit_point(a)), default=-1)
        labels: dict[int, int] = {}
        for a in history[: last + 1]:
            LabelBook.set_label(labels, a)
        post = self._fit(labels, last) if last >= 0 else self._prior()
        for j in range(last + 1, len(history)):
            LabelBook.set_label(labels, history[j])
            post = self._transition(post, history[j], j, labels)
        return post

    # ------------------------------------------------------------------ event folding
    def _validate(self, ev: Mapping[str, Any], where: str | None) -> None:
        """:meth:`LabelBook.validate`; with ``where`` (a stored event being replayed) a failure is raised as
        :class:`CorruptStateError` naming it."""
        try:
            self._book.validate(ev)
        except (ValueError, KeyError, TypeError) as err:
            if where is None:
                raise
            raise CorruptStateError(f"{where}: cannot apply event {dict(ev)}: {err}") from err

    def _fold(self, ev: Mapping[str, Any], where: str) -> None:
        """Apply an event to the bookkeeping only (labels, skipped, history, redo)."""
        self._validate(ev, where)
        self._book.fold(ev)

    def _prepare(self, ev: Mapping[str, Any], where: str | None = None) -> Callable[[], None]:
        """Validate ``ev`` and compute the posterior it leads to; return the function that commits it.

        Nothing changes until the returned function is called, so a failure (invalid input, numerical
        error, a failed log write in between) leaves the session untouched."""
        self._validate(ev, where)
        op = ev["op"]
        if op == "undo":
            cached = self._post_stack[-1]
            new_post = cached if cached is not None else self._replay(self._book.history[:-1])

            def commit() -> None:
                self._post_stack.pop()
                self._book.fold(ev)
                self._post = new_post

            return commit
        action = self._book.redo[-1] if op == "redo" else ev
        new_post = self._transition(self._post, action, len(self._book.history), self._book.labels_after(action))

        def commit() -> None:
            self._book.fold(ev)  # the same bookkeeping as a replayed event
            self._post_stack.append(self._post)
            k = len(self._post_stack) - self._undo_cache - 1
            if k >= 0:
                self._post_stack[k] = None  # bounded cache: older undos are recomputed by replay
            self._post = new_post

        return commit

    def _apply(self, ev: Mapping[str, Any], where: str | None = None) -> None:
        """Apply an event fully (posterior + bookkeeping) without logging it."""
        self._prepare(ev, where)()

    def _record(self, ev: dict[str, Any]) -> None:
        """Validate, compute, log durably, commit: the single path of every user action."""
        ev["seq"] = len(self._events) + 1
        ev["t"] = round(time.time(), 3)
        if self._log_error is not None:
            raise RuntimeError(
                f"the label log could not be written ({self._log_error!r}); nothing was recorded since. "
                "Fix the disk problem and reopen the session with Session.resume() or Session.recover()"
            )
        commit = self._prepare(ev)  # may raise: nothing has changed yet
        if self._log is not None:
            try:
                self._log.append(ev)  # durable before the caller hears back
            except OSError as err:
                # the line may be partly on disk: refuse further events so the log stays a valid prefix
                self._log_error = err
                raise
        commit()
        self._events.append(ev)
        self._events_since_snapshot += 1
        if self.state_dir is not None and self._events_since_snapshot >= self._snapshot_every:
            self._write_snapshot(sync=not self._async_snapshot)

    # ------------------------------------------------------------------ persistence
    def _snapshot_state(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "header": self._header,
            "events": list(self._events),
            # derived from the events; stored for readers and cross-checked on resume
            "labels": dict(self._book.labels),
            "skipped": sorted(self._book.skipped),
            "rng": {"seed": self._seed, "n_events": len(self._events)},
            "posterior": self._post.state_dict(),
        }

    def _write_snapshot(self, sync: bool) -> None:
        assert self.state_dir is not None
        state = self._snapshot_state()
        self._events_since_snapshot = 0
        if sync:
            if self._writer is not None:
                self._writer.flush()
            save_snapshot(self.state_dir / STATE_NAME, state, fsync=self._fsync)
        else:
            if self._writer is None:
                self._writer = SnapshotWriter(self.state_dir / STATE_NAME, self._fsync, self._snapshot_interval)
            self._writer.submit(state)

    def flush(self) -> None:
        """Write the snapshot now (synchronously) and wait for background writes."""
        if self.state_dir is not None and self._log is not None:
            if self._writer is not None:
                self._writer.flush()
            self._write_snapshot(sync=True)

    def close(self) -> None:
        """Flush the snapshot, stop the writer thread and release the directory lock."""
        if self._log is None:
            return
        try:
            self.flush()
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
            self._log.close()
            self._log = None
            if self._dir_lock is not None:
                self._dir_lock.release()
                self._dir_lock = None

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ public API: actions
    def tell(self, index: int, label: int | str) -> None:
        """Record the answer ``label`` (class name or index) for pool ``index`` and update the posterior.

        Any unlabeled index is accepted (not only the last queried; a skipped one is un-skipped).
        Returns after the label is durably logged. May retrain the head (``retrain_every``).
        """
        i = self._book.check_index(index)
        c = self._book.check_label(label)
        if i in self._book.labels:
            raise ValueError(
                f"index {i} is already labeled as {self._names[self._book.labels[i]]!r}; use correct() to change it"
            )
        ev: dict[str, Any] = {"op": "tell", "index": i, "label": c, "name": self._names[c]}
        if i in self._book.skipped:
            ev["was_skipped"] = True
        if self._retrain_due(c):
            ev["retrain"] = True
        self._record(ev)

    def skip(self, index: int) -> None:
        """Mark pool ``index`` as skipped: it is no longer queried (``tell`` still accepts it)."""
        self._record({"op": "skip", "index": self._book.check_index(index)})

    def correct(self, index: int, new_label: int | str) -> None:
        """Change the label of an already labeled ``index``; the posterior mean is shifted accordingly."""
        i = self._book.check_index(index)
        c = self._book.check_label(new_label)
        if i not in self._book.labels:
            raise ValueError(f"index {i} is not labeled yet; use tell()")
        if self._book.labels[i] == c:
            return
        self._record({"op": "correct", "index": i, "label": c, "old": self._book.labels[i], "name": self._names[c]})

    def undo(self) -> dict[str, Any]:
        """Undo the last action (tell, skip, correct or retrain); returns it. ``ValueError`` if none."""
        if not self._book.history:
            raise ValueError("nothing to undo")
        action = dict(self._book.history[-1])
        self._record({"op": "undo"})
        return action

    def redo(self) -> dict[str, Any]:
        """Re-apply the last undone action; returns it. ``ValueError`` if there is none."""
        if not self._book.redo:
            raise ValueError("nothing to redo")
        action = dict(self._book.redo[-1])
        self._record({"op": "redo"})
        return action

    def retrain(self) -> None:
        """Train the head from scratch on all labels (``head_config``) and rebuild the Laplace posterior."""
        self._record({"op": "retrain"})

    def _retrain_due(self, new_class: int) -> bool:
        if self._retrain_every is None:
            return False
        if len(set(self._book.labels.values()) | {new_class}) < 2:
            return False
        since = 0
        for a in reversed(self._book.history):
            if self._is_fit_point(a):
                break
            since += a["op"] == "tell"
        return since + 1 >= self._retrain_every

    # ------------------------------------------------------------------ public API: queries
    def available_indices(self) -> np.ndarray:
        """Sorted pool indices that are neither labeled nor skipped ``(n,)``."""
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
        """``k`` pool indices to label next (fewer if the pool is nearly exhausted; ``[]`` when done).

        Random while :attr:`cold_start` or for the 'random' strategy; else the strategy scores a random
        subset of ``candidate_size`` unlabeled, unskipped instances under the current posterior.
        Deterministic given the seed and the events so far.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        avail = self.available_indices()
        if avail.size == 0:
            return []
        k = min(int(k), int(avail.size))
        gen = torch.Generator().manual_seed(derive_seed(self._seed, "query", len(self._events)))
        if self._strategy is None or self.cold_start:
            pick = torch.randperm(avail.size, generator=gen)[:k].numpy()
            return [int(i) for i in avail[pick]]
        cand = avail
        if self._candidate_size is not None and avail.size > self._candidate_size:
            sub = torch.randperm(avail.size, generator=gen)[: self._candidate_size].sort().values.numpy()
            cand = avail[sub]
        lab_idx = sorted(self._book.labels)
        labeled = LabeledSet(
            features=self._x[lab_idx], labels=torch.tensor([self._book.labels[i] for i in lab_idx], dtype=torch.long)
        )
        res = self._strategy.query(self._post.copy(), self._x[torch.from_numpy(cand)], labeled, k, gen)
        picks = torch.as_tensor(res.indices).long().reshape(-1).tolist()
        if len(picks) != k or len(set(picks)) != k or any(not 0 <= p < cand.size for p in picks):
            raise RuntimeError(f"strategy {self._strategy!r} returned invalid indices {picks} for k={k}")
        return [int(cand[p]) for p in picks]

    def predict_proba(self, indices: Iterable[int] | None = None) -> torch.Tensor:
        """Mean-field predictive ``(n, C)`` of the current posterior for pool ``indices`` (all if None)."""
        if indices is None:
            return self._post.predict_proba(self._x)
        idx = [self._book.check_index(i) for i in indices]
        return self._post.predict_proba(self._x[idx])

    def stopping_signals(self, window: int = 10, reference_size: int = 2000) -> dict[str, Any]:
        """Stopping signals on a fixed random reference subset ``R`` of the pool (``≤ reference_size``).

        * ``expected_accuracy``: ``mean_{x∈R} max_c p(c | x)``, the model's own estimate of its accuracy
          on the pool;
        * ``gain_per_label``: change of ``expected_accuracy`` per label over the last ``window`` labels,
          ``(EA_now − EA_then) / (n_now − n_then)`` — small or negative ⇒ more labels add little;
        * ``flips`` / ``flip_rate``: number / fraction of ``R`` whose predicted class changed over the last
          ``window`` labels — near 0 ⇒ the decisions are stable.

        Values are compared with earlier calls of this method (an in-memory trace, one point per
        distinct label count); ``window_labels`` says how many labels the comparison actually spans.
        On the first call (e.g. after a resume) the point ``window`` labels back is replayed from the
        history.
        """
        if self._ref_idx is None:
            n = self._x.shape[0]
            gen = torch.Generator().manual_seed(derive_seed(self._seed, "reference"))
            self._ref_idx = torch.randperm(n, generator=gen)[: min(n, reference_size)].sort().values
        ea, pred = self._confidence(self._post)
        n_now = len(self._book.labels)
        if not self._trace and n_now > 0:
            self._trace.append(self._past_point(n_now - window))  # e.g. after a resume
        self._trace = [t for t in self._trace if t[0] < n_now]
        self._trace.append((n_now, ea, pred))
        older = [t for t in self._trace if t[0] <= n_now - window]
        then = older[-1] if older else self._trace[0]
        dn = n_now - then[0]
        flips = int((pred != then[2]).sum())
        return {
            "n_labels": n_now,
            "expected_accuracy": ea,
            "gain_per_label": (ea - then[1]) / dn if dn > 0 else float("nan"),
            "flips": flips,
            "flip_rate": flips / pred.numel(),
            "window_labels": dn,
            "reference_size": int(pred.numel()),
        }

    def _confidence(self, post: LastLayerLaplace) -> tuple[float, torch.Tensor]:
        """Expected accuracy and predicted classes ``(R,)`` of ``post`` on the reference subset."""
        probs = post.predict_proba(self._x[self._ref_idx])
        return float(probs.max(1).values.mean()), probs.argmax(1)

    def _past_point(self, n_labels: int) -> tuple[int, float, torch.Tensor]:
        """Trace point of the latest history prefix with at most ``max(n_labels, 0)`` labels (replayed)."""
        labels: dict[int, int] = {}
        end, n_end = 0, 0
        for j, action in enumerate(self._book.history):
            LabelBook.set_label(labels, action)
            if len(labels) <= max(n_labels, 0):
                end, n_end = j + 1, len(labels)
        ea, pred = self._confidence(self._replay(self._book.history[:end]))
        return n_end, ea, pred

    # ------------------------------------------------------------------ public API: read-only state
    @property
    def posterior(self) -> LastLayerLaplace:
        """The current posterior (do not modify it in place)."""
        return self._post

    @property
    def class_names(self) -> list[str]:
        return list(self._names)

    @property
    def num_classes(self) -> int:
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
        return {i: self._names[c] for i, c in self._book.labels.items()}

    @property
    def skipped(self) -> set[int]:
        return set(self._book.skipped)

    @property
    def n_labeled(self) -> int:
        return len(self._book.labels)

    @property
    def history(self) -> list[dict[str, Any]]:
        """Effective actions (after undo/redo), oldest first."""
        return [dict(a) for a in self._book.history]

    @property
    def events(self) -> list[dict[str, Any]]:
        """All logged events (including undo/redo), oldest first."""
        return [dict(e) for e in self._events]

    @property
    def can_undo(self) -> bool:
        return bool(self._book.history)

    @property
    def can_redo(self) -> bool:
        return bool(self._book.redo)

    @property
    def config(self) -> dict[str, Any]:
        """The saved configuration (the log header)."""
        return copy.deepcopy(self._header)

    @property
    def seed(self) -> int:
        return self._seed

    def __repr__(self) -> str:
        where = f", state_dir={str(self.state_dir)!r}" if self.state_dir is not None else ""
        return (
            f"Session(N={self._x.shape[0]}, D={self._x.shape[1]}, C={len(self._names)}, labeled={len(self._book.labels)}, "
            f"skipped={len(self._book.skipped)}, strategy={self._header['strategy']['name']!r}{where})"
        )

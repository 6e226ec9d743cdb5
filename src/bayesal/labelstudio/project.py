"""One Label Studio project's model: the annotations it has seen and the Laplace posterior they give.

Label Studio owns the tasks and annotations; the backend keeps what it needs to answer ``/predict``
without asking Label Studio anything: for every annotation its task id, its label(s) and the task's
features. Everything is *event sourced*:

* ``annotations.log`` (fsync-ed, checksummed JSON lines, written and resumed by the labeling engine,
  :class:`~bayesal.labeling.LabelingEngine`, as a labeling session's log is) holds a header and one
  line per event — ``config`` (the labeling config: class names), ``annotation`` (created or changed;
  with the features, so the log alone rebuilds the model), ``delete`` and ``train``. A webhook is
  acknowledged only after its line is on disk.
* The model is a deterministic function of the log (:class:`AnnotationTimeline`, the engine's fold of
  a project's events). The *timeline* is the list of live annotations in
  the order they were first created (a changed annotation keeps its place, a deleted one leaves it),
  with the ``train`` markers between them. The posterior is its fold: start from the zero-mean prior
  ``N(0, λ₀⁻¹ I)``; each annotation is one Bayesian update (docs/method.md §4; by default the library's:
  ``γ = 1``, damped Newton steps to the mode of the old posterior × the new likelihood); a ``train``
  marker refits the head from scratch on the annotations before it (the exact MAP head for ``λ₀`` by
  default; seeded by the project seed and the marker's position) and rebuilds the Laplace covariance.
  The prior, the refits and the updates are the engine's (:class:`~bayesal.labeling.PosteriorFold`):
  the same answers give a labeling session and a project the same posterior.
* A new annotation is the fold's next step, so it costs one ``O(D² + CD)`` update. A changed or
  deleted annotation, a changed label set or a train marker changes the middle of the timeline: the
  posterior is folded again from the start (lazily, at the next prediction).
* ``posterior.state`` is a snapshot of the posterior after a given event, written in the background
  (coalesced): on restart the log is replayed and, where the snapshot matches, the fold resumes from it
  instead of from the prior. The snapshot is only a cache; a lost or stale one costs time, never labels.

The model version (Label Studio's ``model_version``) is ``bayesal-<log id>-<events>``: it changes
with every event that changes the model, so Label Studio asks again for predictions after each one.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bayesal.exceptions import CorruptStateError, InvalidInputError, StateMismatchError
from bayesal.labeling import (
    LabelingEngine,
    LogFiles,
    PosteriorFold,
    SessionStore,
    StorageOptions,
    log_header,
    logged_records,
    resolve_seed,
)
from bayesal.laplace import DEFAULT_EXACT_UNTIL, FIDELITY_OPTIONS, HeadConfig, LastLayerLaplace
from bayesal.strategies import LabeledSet, ScoreStrategy, Sequential, get_strategy, score_strategy_names
from bayesal.utils import derive_generator

from .config import ChoicesConfig

__all__ = [
    "ProjectModel", "AnnotationTimeline", "Observation", "SCORE_STRATEGIES", "SEQUENTIAL_STRATEGIES", "LOG_NAME",
    "SNAPSHOT_NAME", "FEATURES_NAME",
]

LOG_NAME = "annotations.log"
SNAPSHOT_NAME = "posterior.state"
FEATURES_NAME = "features.bin"
FORMAT = 1
#: The project's files for the labeling engine; a failed append leaves the log as it was (the next
#: webhook may be written).
PROJECT_FILES = LogFiles(log=LOG_NAME, snapshot=SNAPSHOT_NAME, halt_on_write_error=False)
#: The random stream of head refits (``derive_seed(seed, TRAIN_TAG, marker seq)``).
TRAIN_TAG = "labelstudio-train"
#: Strategies whose utility is a per-task score (what a prediction's ``score`` can carry), and their
#: sequential versions (``seq-<base>``, bases with utilities in [0, 1]): see :meth:`ProjectModel.predict`.
#: From the strategy registry (:func:`~bayesal.strategies.score_strategy_names`).
SCORE_STRATEGIES = score_strategy_names()
SEQUENTIAL_STRATEGIES = tuple(name for name in SCORE_STRATEGIES if name.startswith("seq-"))


@dataclass(frozen=True)
class Observation:
    """One annotation: its id, task id, chosen class names and the task's features ``(D,)``."""

    annotation: int
    task: int
    labels: tuple[str, ...]
    feature: np.ndarray

    def same_as(self, other: Observation) -> bool:
        return (
            self.task == other.task
            and self.labels == other.labels
            and np.array_equal(self.feature, other.feature)
        )


def _encode_feature(x: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(x, dtype="<f4").tobytes()).decode("ascii")


def _decode_feature(s: str, dim: int) -> np.ndarray:
    x = np.frombuffer(base64.b64decode(s.encode("ascii")), dtype="<f4")
    if x.shape[0] != dim:
        raise CorruptStateError(f"a stored feature has {x.shape[0]} values, expected {dim}")
    return x.astype(np.float32)


class AnnotationTimeline:
    """A project's events folded (the labeling engine's :class:`~bayesal.labeling.EventFold`): the
    labeling config, the live annotations in timeline order with the ``train`` markers between them,
    and the posterior of their fold (``None`` while it must be folded again).

    ``posteriors`` does the arithmetic (prior, refits, updates); ``fingerprint`` marks the snapshots
    this timeline may resume from; ``state_dir`` is named in messages.
    """

    def __init__(self, state_dir: Path, dim: int, posteriors: PosteriorFold, fingerprint: dict[str, Any]) -> None:
        self.state_dir = state_dir
        self.dim = dim
        self.posteriors = posteriors
        self.fingerprint = fingerprint
        self.config: ChoicesConfig | None = None
        self.obs: dict[int, Observation] = {}
        self.items: list[int | str] = []  # annotation ids and train markers "train:<seq>"
        self.post: LastLayerLaplace | None = None  # None: must be folded again
        self.seq = 0  # the last event applied

    # ------------------------------------------------------------------ the engine's EventFold
    def prepare(self, event: Mapping[str, Any], where: str | None = None) -> Callable[[], None]:
        """The commit of ``event`` (checked by :class:`ProjectModel` before it is logged)."""
        return lambda: self.apply(event, where)

    def absorb(self, event: Mapping[str, Any], where: str) -> None:
        """Fold a logged event the snapshot already holds (the posterior is not folded yet)."""
        self.apply(event, where)

    def start(self, saved: LastLayerLaplace | None) -> None:
        """Resume the fold from the snapshot's posterior where it has the current classes."""
        ok = saved is not None and self.config is not None and saved.num_classes == len(self.config.classes)
        self.post = saved if ok else None

    def snapshot_state(self) -> dict[str, Any] | None:
        """The snapshot: the posterior after the last event (None while it must be folded again)."""
        if self.post is None:
            return None
        return {"seq": self.seq, "fingerprint": self.fingerprint, "posterior": self.post.state_dict()}

    def apply(self, rec: Mapping[str, Any], where: str | None = None) -> None:
        """Apply one event to the timeline, and to the posterior where it is the fold's next step;
        ``where`` names a logged event (a malformed one is then a corrupt log)."""
        try:
            self._apply(rec)
        except (KeyError, TypeError, ValueError) as err:
            if where is None:
                raise
            raise CorruptStateError(f"{where} is malformed ({err})") from err

    def _apply(self, rec: Mapping[str, Any]) -> None:
        op = rec["op"]
        if op == "config":
            new = ChoicesConfig.from_dict(rec["config"])
            if self.config is None or new.classes != self.config.classes:
                self.post = None
            self.config = new
        elif op == "annotation":
            obs = Observation(int(rec["id"]), int(rec["task"]), tuple(str(x) for x in rec["labels"]),
                              _decode_feature(rec["feature"], self.dim))
            if obs.annotation in self.obs:  # changed: same place in the timeline, refold
                self.post = None
            else:
                self.items.append(obs.annotation)
                if self.post is not None:
                    self.post = self._step(self.post, obs)
            self.obs[obs.annotation] = obs
        elif op == "delete":
            self.obs.pop(int(rec["id"]))
            self.items.remove(int(rec["id"]))
            self.post = None
        elif op == "train":
            self.items.append(f"train:{rec['seq']}")
            self.post = None
        else:
            raise CorruptStateError(f"unknown event {op!r}")
        self.seq = int(rec["seq"])

    # ------------------------------------------------------------------ the fold
    def live(self) -> list[Observation]:
        """The live annotations, in timeline order."""
        return [self.obs[a] for a in self.items if isinstance(a, int)]

    def current_config(self) -> ChoicesConfig:
        if self.config is None:
            raise InvalidInputError(
                f"the Label Studio project in {self.state_dir} has no labeling config yet; connect the backend "
                "to the project (Label Studio then calls /setup) first"
            )
        return self.config

    def target(self, obs: Observation) -> torch.Tensor | None:
        """Soft label ``(C,)`` (mass split over the chosen classes) or None if none is a current class."""
        config = self.current_config()
        idx = [i for i in (config.class_index(n) for n in obs.labels) if i is not None]
        if not idx:
            return None
        y = torch.zeros(len(config.classes), dtype=torch.float64)
        y[idx] = 1.0 / len(idx)
        return y

    def _step(self, post: LastLayerLaplace, obs: Observation) -> LastLayerLaplace:
        y = self.target(obs)
        if y is None:
            return post
        x = torch.from_numpy(obs.feature).to(torch.float64).unsqueeze(0)
        return self.posteriors.update(post, x, y.unsqueeze(0))

    def _prior(self) -> LastLayerLaplace:
        return self.posteriors.prior(len(self.current_config().classes), self.dim)

    def _fit(self, seen: list[Observation], marker: str) -> LastLayerLaplace:
        targets = [self.target(o) for o in seen]
        keep = [(o, t) for o, t in zip(seen, targets) if t is not None]
        if not keep:
            return self._prior()
        x = torch.from_numpy(np.stack([o.feature for o, _ in keep])).to(torch.float64)
        y = torch.stack([t for _, t in keep])
        return self.posteriors.fit(x, y, len(self.current_config().classes), int(marker.split(":")[1]))

    def posterior(self) -> LastLayerLaplace:
        """The current posterior (folded from the timeline if an event invalidated it)."""
        self.current_config()
        if self.post is None:
            post = self._prior()
            seen: list[Observation] = []
            for item in self.items:
                if isinstance(item, str):
                    post = self._fit(seen, item)
                else:
                    obs = self.obs[item]
                    post = self._step(post, obs)
                    seen.append(obs)
            self.post = post
        return self.post


class ProjectModel:
    """The posterior of one Label Studio project, folded from its annotation log (see the module doc).

    Parameters
    ----------
    state_dir:
        Directory of this project (created). Holds the log, the snapshot and the feature cache.
    dim:
        Feature dimension D of the backbone.
    strategy:
        Name of a per-task score strategy (:data:`SCORE_STRATEGIES`); its utility is the prediction score.
    batch_size:
        Picks of a sequential strategy per prediction request.
    gamma, curvature, steps:
        The Bayesian update (step size, curvature, Newton steps); ``None`` takes the library's defaults
        (:data:`~bayesal.laplace.update.FIDELITY_OPTIONS`: ``γ = 1``, categorical, 5 steps).
        :data:`~bayesal.laplace.update.PAPER_OPTIONS` with ``head_config=HeadConfig.paper()`` is the
        paper's update and head.
    prior_precision:
        ``λ₀`` of the zero-mean prior the fold starts from and of the head refits; or ``"cv"`` (or
        another :class:`~bayesal.laplace.options.PriorSelection`): chosen from the annotations at each
        ``train`` marker, with the prior before the first one at λ₀ = 1 (as a labeling session's).
        It is part of the snapshots' settings.
    head_config:
        How a ``train`` marker refits the head; ``None``: the exact MAP head of the posterior's objective.
    seed:
        Seed of head refits (saved in the header when the project is created; None draws one).
    fsync:
        fsync log lines and snapshots (off only in tests and benchmarks).
    snapshot_interval:
        Minimum seconds between two background snapshots.
    exact_until:
        Annotations up to which an update refits the head exactly (the early phase; 0 = never).
    spread:
        The predictive's spread (``"cv"``: chosen at each refit; a number fixes it; see
        :mod:`bayesal.laplace.spread`). It is part of the snapshots' settings.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        dim: int,
        *,
        strategy: str = "margin",
        batch_size: int = 10,
        gamma: float | None = None,
        prior_precision: float | str = 1.0,
        curvature: str | None = None,
        steps: int | None = None,
        head_config: HeadConfig | None = None,
        seed: int | None = None,
        fsync: bool = True,
        snapshot_interval: float = 1.0,
        spread: float | str = "cv",
        exact_until: int = DEFAULT_EXACT_UNTIL,
    ) -> None:
        if strategy not in score_strategy_names():
            raise InvalidInputError(
                f"strategy {strategy!r} gives no per-task score for Label Studio; choose one of {score_strategy_names()}"
            )
        self.state_dir = Path(state_dir)
        self.dim = int(dim)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.strategy_name = strategy
        self.batch_size = batch_size
        self._sequential = strategy.startswith("seq-")
        score = get_strategy(strategy.removeprefix("seq-"))
        if not isinstance(score, ScoreStrategy):  # pragma: no cover - guarded by SCORE_STRATEGIES
            raise InvalidInputError(f"strategy {strategy!r} has no per-task score")
        self._strategy: ScoreStrategy = score
        # The posterior owns the update's options: every update below reads them from there.
        given: dict[str, Any] = {"gamma": gamma, "curvature": curvature, "steps": steps}
        options = {k: FIDELITY_OPTIONS[k] if v is None else v for k, v in given.items()}
        probe = LastLayerLaplace(prior_precision=prior_precision, spread=spread, exact_until=exact_until, **options)
        self._pcfg: dict[str, Any] = {"prior_precision": probe.prior_precision, "curvature": probe.curvature.value,
                                      "gamma": probe.gamma, "steps": probe.steps, "spread": probe.spread,
                                      "exact_until": probe.exact_until}
        self.gamma = probe.gamma
        self.head_config = HeadConfig() if head_config is None else head_config
        if not isinstance(self.head_config, HeadConfig):
            raise InvalidInputError(f"head_config must be a HeadConfig, got {type(head_config).__name__}")
        self._lock = threading.RLock()
        # every event is snapshotted, in the background, at most every snapshot_interval seconds
        storage = StorageOptions(fsync=fsync, snapshot_every=1, async_snapshot=True,
                                 snapshot_interval=snapshot_interval)
        store = SessionStore.open(self.state_dir, storage, PROJECT_FILES)
        try:
            self._engine = self._open(store, seed)
        except BaseException:
            store.close()
            raise

    @staticmethod
    def saved_config(state_dir: str | os.PathLike[str]) -> ChoicesConfig | None:
        """The labeling config last recorded in the project folder ``state_dir`` (None if none is)."""
        configs = [r["config"] for r in logged_records(Path(state_dir) / LOG_NAME) if r.get("op") == "config"]
        return ChoicesConfig.from_dict(configs[-1]) if configs else None

    # ------------------------------------------------------------------ files
    def _open(self, store: SessionStore, seed: int | None) -> LabelingEngine:
        """Create the log, or read it and fold its events (resuming from the snapshot where it matches)."""
        path = store.log_path
        if not path.exists():
            self._use_header(log_header(resolve_seed(seed), format=FORMAT, log_id=uuid.uuid4().hex[:8], dim=self.dim))
            store.create_log(self._header)
            return LabelingEngine(self._fold, store)
        res = store.read_log()
        if res.bad_lines:
            raise CorruptStateError(
                f"annotation log {path} is damaged at line {res.bad_lines[0]} (checksum mismatch); move it away "
                "to start this project's model afresh, then re-send the annotations (e.g. Label Studio's Start Training)"
            )
        if not res.records or res.records[0].get("op") != "header" or res.records[0].get("format") != FORMAT:
            raise CorruptStateError(f"annotation log {path} has no bayesal header; is {self.state_dir} a project folder?")
        header = res.records[0]
        if int(header["dim"]) != self.dim:
            raise StateMismatchError(
                f"project folder {self.state_dir} holds {header['dim']}-d features but the backbone gives "
                f"{self.dim}-d; use another --state-dir or the backbone it was made with"
            )
        self._use_header(header)
        engine = LabelingEngine(self._fold)
        events = res.records[1:]
        snap = self._load_snapshot(store)
        engine.resume(events, cached=snap[0] if snap else 0, saved=snap[1] if snap else None,
                      where=lambda k: f"annotation log {path}: event {events[k].get('seq')}")
        store.open_log_at(res.valid_bytes)
        engine.store = store
        return engine

    def _use_header(self, header: dict[str, Any]) -> None:
        """Keep the log's ``header`` and start the empty timeline, with the header's seed and log id."""
        self._header = header
        posteriors = PosteriorFold({**self._pcfg, "head_config": self.head_config}, seed=int(header["seed"]),
                                   tag=TRAIN_TAG)
        fingerprint = {"log_id": header["log_id"], **self._pcfg, "head": dataclasses.asdict(self.head_config)}
        self._fold = AnnotationTimeline(self.state_dir, self.dim, posteriors, fingerprint)

    def _load_snapshot(self, store: SessionStore) -> tuple[int, LastLayerLaplace] | None:
        """``(seq, posterior)`` of a snapshot made by this log with these settings, else None."""
        try:
            state = store.load_snapshot()
            if state.get("fingerprint") != self._fold.fingerprint:
                return None
            return int(state["seq"]), LastLayerLaplace.from_state_dict(state["posterior"])
        except (FileNotFoundError, CorruptStateError, ValueError, KeyError, TypeError):
            return None  # a cache: folding the log gives the same posterior

    def close(self) -> None:
        """Write the final snapshot and release the files."""
        with self._lock:
            engine: LabelingEngine | None = getattr(self, "_engine", None)
            if engine is None or not engine.is_open:
                return
            final = self._fold.config is not None and bool(self._fold.obs)
            try:
                if final:
                    self._fold.posterior()
            finally:
                engine.close(snapshot=final)

    def _append(self, record: dict[str, Any]) -> None:
        """Log ``record`` durably, then apply it (the engine numbers it and snapshots the posterior)."""
        self._engine.record(dict(record))

    def posterior(self) -> LastLayerLaplace:
        """The current posterior (folded from the timeline if an event invalidated it)."""
        with self._lock:
            return self._fold.posterior()

    # ------------------------------------------------------------------ public API
    @property
    def config(self) -> ChoicesConfig | None:
        return self._fold.config

    @property
    def model_version(self) -> str:
        return f"bayesal-{self._header['log_id']}-{self._engine.n_events}"

    @property
    def n_annotations(self) -> int:
        return len(self._fold.obs)

    def labeled_tasks(self) -> dict[int, tuple[str, ...]]:
        """``task id → labels`` of the live annotations (the latest annotation of a task wins)."""
        with self._lock:
            return {o.task: o.labels for o in self._fold.live()}

    def annotation_ids(self) -> list[int]:
        """Ids of the live annotations, in timeline order."""
        with self._lock:
            return [o.annotation for o in self._fold.live()]

    def annotations_of_tasks(self, tasks: set[Any]) -> list[int]:
        """Ids of the live annotations of the given task ids."""
        with self._lock:
            return [a for a, o in self._fold.obs.items() if o.task in tasks]

    def set_config(self, config: ChoicesConfig) -> bool:
        """Record the project's labeling config; True if it changed (a new class list refolds)."""
        with self._lock:
            if config == self._fold.config:
                return False
            self._append({"op": "config", "config": config.to_dict()})
            return True

    def annotate(self, annotation: int, task: int, labels: Sequence[str], feature: np.ndarray) -> bool:
        """Add or change an annotation; True if the model changed (a repeated webhook changes nothing)."""
        with self._lock:
            feat = np.ascontiguousarray(feature, dtype=np.float32).reshape(-1)
            if feat.shape[0] != self.dim or not np.isfinite(feat).all():
                raise InvalidInputError(f"annotation {annotation}: features must be {self.dim} finite numbers")
            obs = Observation(int(annotation), int(task), tuple(str(x) for x in labels), feat)
            old = self._fold.obs.get(obs.annotation)
            if old is not None and old.same_as(obs):
                return False
            self._append({
                "op": "annotation", "id": obs.annotation, "task": obs.task,
                "labels": list(obs.labels), "feature": _encode_feature(feat),
            })
            return True

    def delete(self, annotation: int) -> bool:
        """Forget an annotation; True if it was known."""
        with self._lock:
            if int(annotation) not in self._fold.obs:
                return False
            self._append({"op": "delete", "id": int(annotation)})
            return True

    def train(self) -> None:
        """Refit the head from scratch on all annotations (a ``train`` marker) and rebuild the posterior."""
        with self._lock:
            self._append({"op": "train"})
            self.posterior()
            self._engine.snapshot(sync=False)

    def predict(self, features: np.ndarray, labeled: Sequence[bool] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictive probabilities ``(N, C)`` and scores ``(N,)`` of ``features (N, D)``.

        The score is the strategy's utility. For a sequential strategy (``seq-margin``) the
        ``batch_size`` tasks it picks one after another among the rows not marked in ``labeled`` —
        updating the posterior with each pick's most likely label in between, so the picks are not
        near-duplicates — score above every other task, in pick order: ``1 + (b − r) / b`` for the
        ``r``-th of ``b`` picks (the base utility is at most 1); the other tasks keep the base utility.
        """
        with self._lock:
            post = self.posterior()
            x = torch.as_tensor(np.asarray(features, dtype=np.float64))
            if x.ndim != 2 or x.shape[1] != self.dim:
                raise InvalidInputError(f"features must have shape (N, {self.dim}), got {tuple(x.shape)}")
            probs = post.predict_proba(x)
            gen = derive_generator(int(self._header["seed"]), "labelstudio-score", self._engine.n_events)
            utility = self._strategy.scores(post, x, gen)
            if self._sequential and x.shape[0]:
                utility = self._sequential_scores(post, x, utility, labeled, gen)
            return probs, utility

    def _sequential_scores(
        self, post: LastLayerLaplace, x: torch.Tensor, utility: torch.Tensor, labeled: Sequence[bool] | None,
        gen: torch.Generator,
    ) -> torch.Tensor:
        mask = torch.zeros(x.shape[0], dtype=torch.bool) if labeled is None else torch.as_tensor(list(labeled), dtype=torch.bool)
        if mask.shape[0] != x.shape[0]:
            raise InvalidInputError(f"labeled has {mask.shape[0]} entries for {x.shape[0]} rows")
        pool = (~mask).nonzero().flatten()
        b = min(self.batch_size, int(pool.numel()))
        if b == 0:
            return utility
        obs = self._fold.live()
        targets = [self._fold.target(o) for o in obs]
        keep = [(o, t) for o, t in zip(obs, targets) if t is not None]
        lab = LabeledSet(
            torch.from_numpy(np.stack([o.feature for o, _ in keep])).to(torch.float64) if keep
            else torch.zeros(0, self.dim, dtype=torch.float64),
            torch.tensor([int(t.argmax()) for _, t in keep], dtype=torch.long),
        )
        picks = Sequential(self._strategy, update_with="most_likely").query(post, x[pool], lab, b, gen).indices
        out = utility.clone()
        for r, i in enumerate(picks.tolist()):
            out[pool[i]] = 1.0 + (b - r) / b
        return out

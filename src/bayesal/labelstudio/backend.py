"""What the ML backend does for each Label Studio call, independent of HTTP.

:class:`LabelStudioBackend` keeps one :class:`~.project.ProjectModel` per Label Studio project, in
``<state_dir>/project-<id>-<created>``; ``<id>.<created>`` is the project uid Label Studio sends
(project id and creation time), so a new Label Studio instance that reuses project id 1 gets a fresh
folder. It turns Label Studio's bodies into model calls:

* ``setup(project, schema)`` — parse the labeling config, open the project, return the model version;
* ``predict(tasks, project, label_config)`` — one prediction per task: the most probable class as the
  ``<Choices>`` result, whose ``score`` is its probability, and as the prediction's ``score`` and
  ``utility`` the strategy's utility (the usefulness of labeling the task next, not a confidence) — for
  an annotated task its label doubt (:mod:`~.review`), so label errors sort first;
* ``webhook(payload)`` — ``ANNOTATION_CREATED`` / ``ANNOTATIONS_CREATED`` / ``ANNOTATION_UPDATED``
  apply the Bayesian update, ``ANNOTATIONS_DELETED`` / ``TASKS_DELETED`` remove annotations,
  ``PROJECT_UPDATED`` records a changed labeling config, ``START_TRAINING`` refits the head,
  ``TASKS_CREATED`` is passed on to the listeners; other actions are acknowledged and ignored;
* ``train(annotations, project, label_config)`` — the older ``/train`` call with every annotated
  task: bring the annotations in line with Label Studio's, then refit.

Listeners (:meth:`LabelStudioBackend.subscribe`, e.g. :class:`~.push.PredictionPusher`) hear of every
applied webhook and every ``/setup``, after the change is on disk.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeGuard

from bayesal.data import Backbone
from bayesal.exceptions import InvalidInputError, StateMismatchError
from bayesal.laplace import DEFAULT_LAMBDA_MF, Hessian, PosteriorOptions

from .config import ChoicesConfig, parse_label_config
from .features import FeatureStore, TaskFeaturizer, default_backbone
from .project import FEATURES_NAME, LOG_NAME, ProjectModel
from .review import label_doubt_scores

__all__ = ["LabelStudioBackend", "BackendSettings", "annotation_labels", "ANNOTATION_ACTIONS"]

ANNOTATION_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED")
log = logging.getLogger("bayesal.labelstudio")
#: λ₀ of the backend's default posterior options.
BACKEND_PRIOR_PRECISION = 1.0


def _default_posterior() -> PosteriorOptions:
    return PosteriorOptions(prior_precision=BACKEND_PRIOR_PRECISION)


@dataclass(frozen=True)
class BackendSettings:
    """Model settings shared by all projects (see :class:`~.project.ProjectModel`) and where local
    image files may be read from (see :class:`~.features.TaskFeaturizer`).

    ``posterior``: the library's update (``γ = 1``, 5 damped Newton steps, categorical curvature) and
    exact MAP head with λ₀ = 1 by default; ``PosteriorOptions.paper()`` for the paper's update and head
    recipe. λ₀ is a number, or chosen from the annotations at each refit (``"cv"``, …; before the
    first refit a project's posterior starts from the prior ``N(0, I)``, λ₀ = 1, as a labeling session
    does); the covariance must be shared and the mean-field scale the default.
    """

    strategy: str = "margin"
    batch_size: int = 10
    posterior: PosteriorOptions = field(default_factory=_default_posterior)
    seed: int | None = None
    files_root: str | None = None
    upload_root: str | None = None
    fsync: bool = True

    def __post_init__(self) -> None:
        p = self.posterior
        if not isinstance(p, PosteriorOptions):
            raise InvalidInputError(f"posterior must be a PosteriorOptions, got {type(p).__name__}")
        if p.hessian is not Hessian.SHARED or p.lambda_mf != DEFAULT_LAMBDA_MF:
            raise InvalidInputError("the Label Studio backend uses the shared covariance and the default mean-field "
                                    f"scale; got hessian={p.hessian.value!r}, lambda_mf={p.lambda_mf}")
        for option, root in (("--files-root", self.files_root), ("--upload-root", self.upload_root)):
            # checked at start: a mistyped folder would otherwise fail each image task later
            if root is not None and not Path(root).is_dir():
                raise InvalidInputError(f"{option} {root} is not a folder; pass the folder Label Studio serves the "
                                        "files from")


#: Longest project id / creation time accepted (Label Studio's are database ids and Unix times).
_MAX_ID_DIGITS = 18


def _is_id(value: Any) -> TypeGuard[int]:
    """A Label Studio id: a non-negative integer of at most 18 digits (``True`` is no id)."""
    return type(value) is int and 0 <= value < 10**_MAX_ID_DIGITS


def _project_uid(project: Any) -> tuple[int, str]:
    """``(id, uid)`` from a ``/setup``/``/predict`` project string ``"<id>.<created unix time>"``, a bare id,
    or a webhook's project object (``id`` and ISO ``created_at``)."""
    if isinstance(project, Mapping):
        pid = project.get("id")
        created = project.get("created_at")
        if not _is_id(pid):
            raise InvalidInputError("the webhook's project has no integer id (at most 18 digits); is this a Label "
                                    "Studio webhook?")
        if isinstance(created, str) and created:
            try:
                ts = int(datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp())
            except (ValueError, OverflowError) as err:
                raise InvalidInputError(f"project {pid}: cannot read created_at {created[:40]!r}") from err
            return pid, f"{pid}.{ts}"
        return pid, str(pid)
    if isinstance(project, bool) or not isinstance(project, (int, str)):
        raise InvalidInputError(f"project must be a Label Studio project id ('<id>' or '<id>.<created>'), "
                                f"got {type(project).__name__}")
    text = str(project)
    head, _, tail = text.partition(".")
    if not (head.isascii() and head.isdigit() and len(head) <= _MAX_ID_DIGITS) or (
        tail and not (tail.isascii() and tail.isdigit() and len(tail) <= _MAX_ID_DIGITS)
    ):
        raise InvalidInputError(f"project {text[:40]!r} is not a Label Studio project id ('<id>' or '<id>.<created>', "
                                "at most 18 digits each)")
    return int(head), text


def _listed(payload: Mapping[str, Any], key: str) -> list[Any]:
    """``payload[key]`` as a list (a missing or null value: empty); anything else is refused."""
    value = payload.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidInputError(f"the webhook's {key!r} must be a list, got {type(value).__name__}; is this a Label "
                                "Studio webhook?")
    return value


def _task_id(task: Mapping[str, Any]) -> int:
    """The integer id of a task (refused otherwise: a task's id keys the model's annotations)."""
    tid = task.get("id")
    if not _is_id(tid):
        raise InvalidInputError(f"a task's id must be an integer, got {type(tid).__name__}; is this a Label Studio task?")
    return tid


def annotation_labels(annotation: Mapping[str, Any], config: ChoicesConfig) -> list[str] | None:
    """The class names an annotation chose in the config's ``<Choices>``; None if it chose none (a
    skipped/cancelled annotation, or one that labels other controls only)."""
    if annotation.get("was_cancelled"):
        return None
    result = annotation.get("result")
    if result is not None and not isinstance(result, list):
        raise InvalidInputError(f"annotation {annotation.get('id')!r}: 'result' must be a list of regions, got "
                                f"{type(result).__name__}")
    chosen: list[str] = []
    for item in result or []:
        if not isinstance(item, Mapping) or item.get("from_name") != config.from_name:
            continue
        value = item.get("value")
        choices = value.get("choices") if isinstance(value, Mapping) else None
        if choices is not None and not isinstance(choices, list):
            raise InvalidInputError(f"annotation {annotation.get('id')!r}: the choices of {config.from_name!r} must be "
                                    f"a list, got {type(choices).__name__}")
        if isinstance(choices, list):
            chosen.extend(str(c) for c in choices)
    return chosen or None


class _Project:
    """A project's model and featurizer."""

    def __init__(self, model: ProjectModel, featurizer: TaskFeaturizer) -> None:
        self.model = model
        self.featurizer = featurizer


class LabelStudioBackend:
    """The ML backend's state: projects under ``state_dir``, each with its model and feature cache.

    ``backbones`` maps an item kind (``"text"``, ``"image"``) to the backbone to use; by default the
    backbones of bayesal's data sets (:func:`~.features.default_backbone`).
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        settings: BackendSettings | None = None,
        backbones: Mapping[str, Backbone] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.settings = settings or BackendSettings()
        self._backbones = dict(backbones or {})
        self._projects: dict[str, _Project] = {}
        self._lock = threading.Lock()
        self._listeners: list[Callable[[str, str], None]] = []

    def subscribe(self, listener: Callable[[str, str], None]) -> None:
        """Call ``listener(project uid, action)`` after each applied webhook (``action`` is Label Studio's)
        and each ``/setup`` (``"SETUP"``). It runs in the request's thread: it must return at once."""
        self._listeners.append(listener)

    def _tell(self, project: Any, action: str) -> None:
        pid, uid = _project_uid(project)
        with self._lock:
            uid = self._known_uid(pid, uid)
        for listener in list(self._listeners):
            try:
                listener(uid, action)
            except Exception as err:  # noqa: BLE001 - a listener never fails the call that was applied
                log.warning("a listener of the Label Studio backend failed on %s: %s", action, err)

    # ------------------------------------------------------------------ projects
    def backbone(self, kind: str) -> Backbone:
        if kind not in self._backbones:
            self._backbones[kind] = default_backbone(kind)
        return self._backbones[kind]

    def _folder(self, uid: str) -> Path:
        return self.state_dir / f"project-{uid.replace('.', '-')}"

    def _known_uid(self, pid: int, uid: str) -> str:
        """``uid``, or for a bare id the one project folder with that id."""
        if "." in uid:
            return uid
        matches = sorted({u for u in self._projects if u.split(".")[0] == str(pid)}
                         | {p.name[len("project-"):].replace("-", ".", 1) for p in self.state_dir.glob(f"project-{pid}-*")})
        return matches[0] if len(matches) == 1 else uid

    def project(self, project: Any, label_config: str | None = None) -> _Project:
        """The project (opened on first use); ``label_config`` (XML) is recorded if given."""
        pid, uid = _project_uid(project)
        config = parse_label_config(label_config) if label_config else None
        with self._lock:
            uid = self._known_uid(pid, uid)
            proj = self._projects.get(uid)
            if proj is None:
                folder = self._folder(uid)
                if config is None and not (folder / LOG_NAME).exists():
                    raise InvalidInputError(
                        f"Label Studio project {pid} is not set up with this backend yet and the request carries no "
                        "labeling config; connect the backend in the project's Model settings"
                    )
                proj = self._open(folder, config)
                self._projects[uid] = proj
        if config is not None and config != proj.featurizer.config:
            if self.backbone(config.kind).dim != proj.model.dim:
                raise StateMismatchError(
                    f"Label Studio project {pid} now labels {config.kind} items, but its model in "
                    f"{proj.model.state_dir} was made for {proj.featurizer.config.kind}; move that folder away "
                    "to start its model afresh"
                )
            proj.model.set_config(config)
            proj.featurizer = self._featurizer(proj.model, config)
        return proj

    def _open(self, folder: Path, config: ChoicesConfig | None) -> _Project:
        kind = config.kind if config is not None else None
        if kind is None:  # a known folder: its logged config says which backbone
            saved = ProjectModel.saved_config(folder)
            if saved is None:
                raise InvalidInputError(f"project folder {folder} holds no labeling config; connect the backend again")
            kind = saved.kind
        bb = self.backbone(kind)
        s, p = self.settings, self.settings.posterior
        model = ProjectModel(folder, int(bb.dim or 0), strategy=s.strategy, batch_size=s.batch_size,
                             prior_precision=p.posterior_kwargs()["prior_precision"], gamma=p.gamma, curvature=p.curvature.value,
                             steps=p.steps, head_config=p.head, seed=s.seed, fsync=s.fsync,
                             spread=p.posterior_kwargs()["spread"], exact_until=p.exact_until)
        if config is not None:
            model.set_config(config)
        cfg = model.config
        if cfg is None:  # pragma: no cover - set above or read from the log
            raise InvalidInputError(f"project folder {folder} holds no labeling config")
        return _Project(model, self._featurizer(model, cfg))

    def _featurizer(self, model: ProjectModel, config: ChoicesConfig) -> TaskFeaturizer:
        bb = self.backbone(config.kind)
        store = FeatureStore(model.state_dir / FEATURES_NAME, model.dim, bb.config())
        return TaskFeaturizer(config, bb, files_root=self.settings.files_root,
                              upload_root=self.settings.upload_root, store=store)

    def warm_up(self, kind: str) -> threading.Thread:
        """Load the backbone for ``kind`` in a background thread (Label Studio's setup call times out
        after 3 s; loading a model can take longer)."""
        bb = self.backbone(kind)
        t = threading.Thread(target=lambda: getattr(bb, "model", None), name="bayesal-backbone", daemon=True)
        t.start()
        return t

    def close(self) -> None:
        with self._lock:
            projects, self._projects = list(self._projects.values()), {}
        for p in projects:
            p.model.close()

    # ------------------------------------------------------------------ calls
    def setup(self, project: Any, schema: str) -> str:
        """``/setup``: record the labeling config; the current model version."""
        if not schema:
            raise InvalidInputError("setup needs the project's labeling config (schema)")
        proj = self.project(project, schema)
        self.warm_up(proj.featurizer.config.kind)
        version = proj.model.model_version
        self._tell(project, "SETUP")
        return version

    def predict(self, tasks: Sequence[Mapping[str, Any]], project: Any, label_config: str | None) -> tuple[list[dict[str, Any]], str]:
        """``/predict``: one prediction per task and the model version."""
        proj = self.project(project, label_config)
        cfg = proj.featurizer.config
        if not tasks:
            return [], proj.model.model_version
        if not all(isinstance(t, Mapping) for t in tasks):
            raise InvalidInputError("every task must be a JSON object; is this a Label Studio /predict call?")
        ids = [_task_id(t) for t in tasks]
        feats = proj.featurizer.encode(tasks)
        done = proj.model.labeled_tasks()
        probs, utility = proj.model.predict(feats, labeled=[i in done for i in ids])
        annotated = [k for k, i in enumerate(ids) if i in done]
        if annotated:  # an annotated task's score is its label doubt: the Data Manager sorts label errors first
            doubt = label_doubt_scores(proj.model.posterior(), feats[annotated],
                                       [done[ids[k]] for k in annotated], cfg)
            for k, d in zip(annotated, doubt):
                if d == d:
                    utility[k] = float(d)
        version = proj.model.model_version
        results = []
        for p, u in zip(probs, utility):
            top = int(p.argmax())
            results.append({
                "result": [{
                    "from_name": cfg.from_name, "to_name": cfg.to_name, "type": "choices",
                    "value": {"choices": [cfg.classes[top]]}, "score": round(float(p[top]), 6),
                }],
                # the Data Manager sorts by the prediction's score: the usefulness of labeling the task
                # next, named as such too (the class probability is the result's own score above)
                "score": round(float(u), 6),
                "utility": round(float(u), 6),
                "model_version": version,
            })
        return results, version

    def versions(self, project: Any = None) -> list[str]:
        """Model version of ``project``, or of every open project when None."""
        if project is not None:
            return [self.project(project).model.model_version]
        with self._lock:
            return sorted(p.model.model_version for p in self._projects.values())

    def webhook(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """``/webhook``: apply one Label Studio event; a summary of what changed."""
        action = payload.get("action")
        handlers: dict[str, Callable[[Mapping[str, Any]], dict[str, Any]]] = {
            "ANNOTATION_CREATED": self._on_annotations,
            "ANNOTATIONS_CREATED": self._on_annotations,
            "ANNOTATION_UPDATED": self._on_annotations,
            "ANNOTATIONS_DELETED": self._on_annotations_deleted,
            "TASKS_DELETED": self._on_tasks_deleted,
            "PROJECT_UPDATED": self._on_project_updated,
            "START_TRAINING": self._on_start_training,
            "TASKS_CREATED": self._on_project_updated,
        }
        handler = handlers.get(action) if isinstance(action, str) else None
        if handler is None or not isinstance(action, str) or not isinstance(payload.get("project"), Mapping):
            # echoed back as Python would print it: JSON cannot carry a lone surrogate
            shown = action if isinstance(action, str) and action.isascii() else repr(action)[:200]
            return {"action": shown, "status": "ignored"}
        summary = handler(payload)
        self._tell(payload["project"], action)
        return {"action": action, **summary}

    def _webhook_project(self, payload: Mapping[str, Any]) -> _Project:
        project = payload["project"]
        return self.project(project, project.get("label_config") or None)

    def _on_annotations(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        anns, tasks = payload.get("annotation"), payload.get("task")
        anns = anns if isinstance(anns, list) else [anns]
        tasks = tasks if isinstance(tasks, list) else [tasks]
        by_id = {t["id"]: t for t in tasks if isinstance(t, Mapping) and _is_id(t.get("id"))}
        for ann in anns:  # all checked before the first is applied
            if not isinstance(ann, Mapping) or not _is_id(ann.get("id")):
                raise InvalidInputError("a webhook annotation has no integer id; is this a Label Studio webhook?")
            if ann.get("task") is not None and not _is_id(ann.get("task")):
                raise InvalidInputError(f"annotation {ann['id']}: its task id must be an integer, got "
                                        f"{type(ann.get('task')).__name__}")
        proj = self._webhook_project(payload)
        changed = 0
        for ann in anns:
            changed += self._sync_annotation(proj, ann, by_id.get(ann.get("task")))
        return {"status": "ok", "changed": changed, "model_version": proj.model.model_version}

    def _sync_annotation(self, proj: _Project, ann: Mapping[str, Any], task: Mapping[str, Any] | None) -> int:
        labels = annotation_labels(ann, proj.featurizer.config)
        if labels is None:
            return int(proj.model.delete(ann["id"]))
        if task is None:
            raise InvalidInputError(f"annotation {ann['id']}: the webhook carries no task {ann.get('task')} to read the item from")
        feature = proj.featurizer.encode([task])[0]
        return int(proj.model.annotate(ann["id"], _task_id(task), labels, feature))

    def _on_annotations_deleted(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        ids = [a.get("id") for a in _listed(payload, "annotations") if isinstance(a, Mapping)]
        proj = self._webhook_project(payload)
        changed = sum(proj.model.delete(i) for i in ids if _is_id(i))
        return {"status": "ok", "changed": changed, "model_version": proj.model.model_version}

    def _on_tasks_deleted(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        gone = {t["id"] for t in _listed(payload, "tasks") if isinstance(t, Mapping) and _is_id(t.get("id"))}
        proj = self._webhook_project(payload)
        changed = sum(proj.model.delete(a) for a in proj.model.annotations_of_tasks(gone))
        return {"status": "ok", "changed": changed, "model_version": proj.model.model_version}

    def _on_project_updated(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        proj = self._webhook_project(payload)
        return {"status": "ok", "model_version": proj.model.model_version}

    def _on_start_training(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        proj = self._webhook_project(payload)
        proj.model.train()
        return {"status": "ok", "model_version": proj.model.model_version}

    def train(self, annotated_tasks: Sequence[Mapping[str, Any]], project: Any, label_config: str | None) -> str:
        """``/train``: make the annotations match ``annotated_tasks`` (Label Studio's export of every
        task with annotations), then refit the head. Returns the model version."""
        proj = self.project(project, label_config)
        live: set[int] = set()
        for task in annotated_tasks:
            if not isinstance(task, Mapping):
                raise InvalidInputError("every annotated task must be a JSON object; is this a Label Studio /train call?")
            for ann in _listed(task, "annotations"):
                if isinstance(ann, Mapping) and _is_id(ann.get("id")):
                    live.add(ann["id"])
                    self._sync_annotation(proj, ann, task)
        for stale in set(proj.model.annotation_ids()) - live:
            proj.model.delete(stale)
        proj.model.train()
        return proj.model.model_version

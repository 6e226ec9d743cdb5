"""Fresh predictions written into Label Studio after every change, so its Data Manager's sort by
prediction score is current without a *Retrieve predictions*.

:class:`PredictionPusher` listens to the backend (:meth:`~.backend.LabelStudioBackend.subscribe`): an
applied annotation webhook (or a connect, tasks created or deleted) marks its project *due*, and a
background thread pushes. The webhook never waits for Label Studio: marking is a dictionary write, and
a burst of annotations coalesces into one push of the latest scores (a project due while its push
runs is pushed once more afterwards).

A push of a project (:meth:`PredictionPusher.push`):

1. reads the project's task list from Label Studio once (again after ``TASKS_CREATED`` /
   ``TASKS_DELETED``) and scores every task as ``/predict`` does (:meth:`~.backend.LabelStudioBackend.predict`:
   the result's ``score`` is the class probability, the prediction's ``score`` the usefulness of
   labeling the task next);
2. writes the predictions whose score changed — after a new model version every task's, else only the
   tasks not yet pushed — in batches through ``POST /api/projects/<id>/import/predictions``;
3. has Label Studio record the new model version of the ML backends this backend serves (``GET
   /api/ml/<id>``: Label Studio calls ``/setup``), so the Data Manager's *Prediction score* counts it;
4. deletes its superseded predictions: every other model version of this project's model
   (``bayesal-<log id>-<n>``), with ``DELETE /api/projects/<id>/model-versions/``. Predictions of
   other models and of other bayesal folders are left alone.

A failure (Label Studio unreachable, a refused token, a 4xx) is logged as a warning and recorded in
:meth:`PredictionPusher.status`; the project stays due and is pushed again after a back-off (1 s,
doubling up to ``max_backoff``). Annotations are never lost: they are in the backend's log before the
webhook is answered; the push only ever reads the model.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .backend import LabelStudioBackend
from .client import LabelStudioClient

__all__ = ["PredictionPusher", "PUSH_ACTIONS"]

log = logging.getLogger("bayesal.labelstudio.push")

#: Backend events after which a project is pushed (``SETUP``: the first connect only).
PUSH_ACTIONS = ("SETUP", "ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED",
                "TASKS_CREATED", "TASKS_DELETED", "START_TRAINING", "PROJECT_UPDATED")
#: Events after which the project's task list is read again.
TASK_LIST_ACTIONS = ("TASKS_CREATED", "TASKS_DELETED")


@dataclass
class _Pushed:
    """What Label Studio holds of one project: its task list and the version pushed for which tasks."""

    tasks: list[dict[str, Any]] | None = None
    version: str | None = None
    task_ids: set[int] = field(default_factory=set)
    failures: int = 0


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _family(version: str) -> str:
    """``"bayesal-<log id>-"``: the prefix of every model version of one project's model."""
    return version.rsplit("-", 1)[0] + "-"


class PredictionPusher:
    """Pushes ``backend``'s predictions into Label Studio through ``client``, in a background thread.

    ``batch_size``: predictions per import request; ``max_backoff``: longest wait (seconds) before a
    failed push is tried again. :meth:`start` the thread, :meth:`close` it.
    """

    def __init__(self, backend: LabelStudioBackend, client: LabelStudioClient, *, batch_size: int = 1000,
                 max_backoff: float = 30.0, first_backoff: float = 1.0) -> None:
        self.backend = backend
        self.client = client
        self.batch_size = int(batch_size)
        self.max_backoff = float(max_backoff)
        self.first_backoff = float(first_backoff)
        self._cond = threading.Condition()
        self._due: dict[str, float] = {}  # project uid -> monotonic time it may be pushed at
        self._stale: set[str] = set()  # projects whose task list must be read again
        self._projects: dict[str, _Pushed] = {}
        self._busy = False
        self._closing = False
        self._thread: threading.Thread | None = None
        self._status: dict[str, Any] = {
            "label_studio_url": client.url, "pushes": 0, "last_push": None, "last_push_s": None,
            "tasks_pushed": 0, "predictions_deleted": 0, "model_version": None, "last_error": None,
            "last_error_at": None,
        }
        backend.subscribe(self.notify)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> PredictionPusher:
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="bayesal-ls-push", daemon=True)
                self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread (a push under way finishes first, up to ``timeout`` seconds)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def notify(self, project: str, action: str) -> None:
        """The backend applied ``action`` to ``project`` (a uid): mark it due. Never blocks on Label Studio."""
        if action not in PUSH_ACTIONS:
            return
        with self._cond:
            if action == "SETUP":
                # Label Studio calls /setup on every look at the model (the push's own included): only a
                # project seen for the first time is pushed
                if project in self._projects:
                    return
                self._projects[project] = _Pushed()
            if action in TASK_LIST_ACTIONS:
                self._stale.add(project)
            self._due.setdefault(project, time.monotonic())
            self._cond.notify_all()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until no project is due (or only ones backing off after a failure) and no push runs;
        False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._busy or any(t <= time.monotonic() for t in self._due.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
            return True

    def status(self) -> dict[str, Any]:
        """The last push (UTC time, seconds taken, tasks written, superseded predictions deleted, model
        version), the last error, and the projects waiting for a push."""
        with self._cond:
            now = time.monotonic()
            return {
                **self._status,
                "due": sorted(self._due),
                "retry_in_s": {u: round(t - now, 3) for u, t in self._due.items() if t > now} or None,
            }

    # ------------------------------------------------------------------ the worker
    def _run(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closing:
                        return
                    now = time.monotonic()
                    ready = sorted(u for u, t in self._due.items() if t <= now)
                    if ready:
                        break
                    wait = min(self._due.values()) - now if self._due else None
                    self._cond.wait(wait)
                for uid in ready:
                    del self._due[uid]
                self._busy = True
            try:
                for uid in ready:
                    self._push_logged(uid)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _push_logged(self, uid: str) -> None:
        started = time.monotonic()
        try:
            summary = self.push(uid)
        except Exception as err:  # noqa: BLE001 - any failure is reported and retried, never raised into a webhook
            with self._cond:
                state = self._projects.setdefault(uid, _Pushed())
                state.failures += 1
                delay = min(self.max_backoff, self.first_backoff * 2 ** (state.failures - 1))
                self._due[uid] = max(self._due.get(uid, 0.0), time.monotonic() + delay)
                self._status.update(last_error=f"project {uid}: {err}", last_error_at=_now_iso())
            log.warning("could not push predictions of Label Studio project %s (trying again in %.0f s): %s",
                        uid, delay, err)
            return
        with self._cond:
            self._projects[uid].failures = 0
            if summary is not None:
                self._status.update(pushes=self._status["pushes"] + 1, last_push=_now_iso(),
                                    last_push_s=round(time.monotonic() - started, 3), **summary)

    # ------------------------------------------------------------------ one push
    def push(self, uid: str) -> dict[str, Any] | None:
        """Push project ``uid`` now (in the calling thread); what was done, or None if Label Studio
        already holds the current predictions. Raises what the client raises."""
        pid = int(uid.split(".")[0])
        with self._cond:
            state = self._projects.setdefault(uid, _Pushed())
            reread = state.tasks is None or uid in self._stale
            self._stale.discard(uid)
        try:
            if reread:
                state.tasks = self.client.tasks(pid)
                state.task_ids &= {t["id"] for t in state.tasks}
        except Exception:
            if reread:
                with self._cond:
                    self._stale.add(uid)
            raise
        tasks = state.tasks or []
        model = self.backend.project(uid).model
        if model.model_version == state.version and all(t["id"] in state.task_ids for t in tasks):
            return None
        for _ in range(3):  # the scores and the version must belong together: an annotation may land between
            before = model.model_version
            results, version = self.backend.predict(tasks, uid, None)
            if version == before:
                break
        todo = [k for k, t in enumerate(tasks) if version != state.version or t["id"] not in state.task_ids]
        predictions = [{"task": tasks[k]["id"], "result": results[k]["result"], "score": results[k]["score"],
                        "model_version": version} for k in todo]
        for start in range(0, len(predictions), self.batch_size):
            self.client.import_predictions(pid, predictions[start:start + self.batch_size])
        if version != state.version:
            state.version, state.task_ids = version, set()
        state.task_ids |= {p["task"] for p in predictions}
        keep = {version} | self._point_label_studio_at(pid, version)
        deleted = 0
        family = _family(version)
        for old in self.client.model_versions(pid):
            if old.startswith(family) and old[len(family):].isdigit() and old not in keep:
                deleted += self.client.delete_model_version(pid, old)
        return {"tasks_pushed": len(predictions), "predictions_deleted": deleted, "model_version": version}

    def _point_label_studio_at(self, pid: int, version: str) -> set[str]:
        """Have Label Studio re-read the model version of the project's ML backends that serve this
        model; the versions they now have."""
        family = _family(version)
        now: set[str] = set()
        for ml in self.client.ml_backends(pid):
            current = str(ml.get("model_version") or "")
            if not current.startswith(family) or not isinstance(ml.get("id"), int):
                continue
            if current != version:
                current = str(self.client.refresh_ml_backend(ml["id"]).get("model_version") or "")
            now.add(current)
        return now

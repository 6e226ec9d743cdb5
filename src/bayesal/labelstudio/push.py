"""Fresh predictions written into Label Studio after every change, so its Data Manager's sort by
prediction score is current without a *Retrieve predictions*.

:class:`PredictionPusher` listens to the backend (:meth:`~.backend.LabelStudioBackend.subscribe`): an
applied annotation webhook (or a connect, tasks created or deleted) marks its project *due*, and a
background thread pushes. The webhook never waits for Label Studio: marking is a dictionary write (and
a job for a second thread, which computes the new scores at once, while the pushing thread may still
wait for a request), and a burst of annotations coalesces into one push of the latest scores (a
project due while its push runs is pushed once more afterwards).

Each task holds one *live* prediction of this backend, model version ``bayesal-<log id>-live`` (then
``…-live1``, ``…-live2``, …), updated in place: Label Studio 1.23 has no bulk update and deletes
predictions at about 20 ms each inside one database transaction (see :mod:`.client`), so a new model
version per annotation — 1,000 new predictions and 1,000 to delete — would pile up or lock its
database. A push of a project (:meth:`PredictionPusher.push`):

1. reads the project's task list once (again after ``TASKS_CREATED`` / ``TASKS_DELETED``) and scores
   every task as ``/predict`` does (:meth:`~.backend.LabelStudioBackend.predict`: the result's
   ``score`` is the class probability, the prediction's ``score`` the usefulness of labeling the task
   next);
2. creates the live predictions of tasks that have none, in batches (``POST
   /api/projects/<id>/import/predictions``), and learns their ids;
3. updates the live predictions whose score or predicted class changed (``PATCH
   /api/predictions/<id>/``, ``workers`` at a time), the highest scores first — the top of the Data
   Manager's sort is current first — at most ``max_updates`` per round; the rest follow in the next
   rounds, merged with newer changes; a change stops a round after its current request. The first round
   after a change writes the *head* alone when it is small (at most ``max_head`` predictions): the
   changed tasks whose old or new score reaches the ``head``-th highest new score, so the Data
   Manager's first ``head`` rows are the new top tasks with their new scores about one request (~0.25 s
   on a busy Label Studio) after the scores are computed. When more tasks fell from the top (a change
   of many scores), it writes the ``head`` tasks with the highest new scores alone instead: they show
   their new scores at once, and sort first once the fallen ones are written. When more than
   ``bulk_above`` changed and no superseded prediction waits to be deleted, every task then gets a
   prediction of the next live version in one import, Label Studio is set to that version (all scores
   change at once) and the previous live predictions become superseded;
4. points the project's ML backends that serve this model at the live version (``model_version``,
   ``auto_update`` off), which the Data Manager's *Prediction score* counts;
5. deletes its superseded predictions — the other model versions of this project's model
   (``bayesal-<log id>-<n>``, e.g. from *Retrieve predictions*) and duplicate live ones — one at a
   time, at most ``max_deletes`` per round, when no update waits, stopping at a change. Other models'
   predictions and other bayesal folders' are left alone.

A failure (Label Studio unreachable, a refused token, a 4xx) is logged as a warning and recorded in
:meth:`PredictionPusher.status`; the project stays due and is pushed again after a back-off (1 s,
doubling up to ``max_backoff``). Annotations are never lost: they are in the backend's log before the
webhook is answered; the push only ever reads the model.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .backend import LabelStudioBackend
from .client import LabelStudioAPIError, LabelStudioClient

__all__ = ["PredictionPusher", "PUSH_ACTIONS"]

log = logging.getLogger("bayesal.labelstudio.push")

#: Backend events after which a project is pushed (``SETUP``: the first connect only).
PUSH_ACTIONS = ("SETUP", "ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED",
                "TASKS_CREATED", "TASKS_DELETED", "START_TRAINING", "PROJECT_UPDATED")
#: Events after which the project's task list is read again.
TASK_LIST_ACTIONS = ("TASKS_CREATED", "TASKS_DELETED")


#: Seconds after a repeated ``/setup`` (Label Studio calls it before *Retrieve predictions*) at which the
#: project's predictions are read again, to find superseded ones.
RESYNC_DELAY = 5.0


@dataclass
class _Pushed:
    """What Label Studio holds of one project: its task list and this backend's live predictions."""

    tasks: list[dict[str, Any]] | None = None
    live_version: str | None = None  # the model version of the live predictions
    #: task id -> (prediction id, score, predicted class) of its live prediction as stored
    live: dict[int, tuple[int, float, str]] = field(default_factory=dict)
    synced: bool = False  # ``live`` and ``superseded`` read from Label Studio
    superseded: list[int] = field(default_factory=list)  # prediction ids to delete
    pending: int = 0  # changed live predictions not updated yet
    failures: int = 0
    #: (model version, task list, task scores) last computed: a round of an unchanged model reuses them
    scored: tuple[str, list[dict[str, Any]], dict[int, tuple[float, Any]]] | None = None
    scoring: Future[Any] | None = None  # the scores being computed ahead of the round, since the last change
    changed_at: float | None = None  # monotonic time of the oldest change whose head is not written yet
    last_change_at: float = 0.0  # ... and of the latest change
    changes: int = 0  # changes notified so far
    head_round: int = 0  # ``changes`` when the last head round ran: one per change


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _family(version: str) -> str:
    """``"bayesal-<log id>-"``: the prefix of every model version of one project's model."""
    return version.rsplit("-", 1)[0] + "-"


def _choice(result: Any) -> str:
    try:
        return str(result[0]["value"]["choices"][0])
    except (LookupError, TypeError):
        return ""


class PredictionPusher:
    """Pushes ``backend``'s predictions into Label Studio through ``client``, in a background thread.

    ``batch_size``: predictions per import request; ``max_updates``: live predictions updated per
    round, ``workers`` requests at a time (Label Studio's SQLite database refuses concurrent writes
    after a few seconds: 1 by default); ``head``, ``max_head``: the first round after a change
    writes only the changed tasks that decide the Data Manager's first ``head`` rows when they are
    at most ``max_head``, else the ``head`` changed tasks with the highest new scores (``max_head``
    0: no such round); ``bulk_above``: when more predictions than this changed (and
    no superseded ones wait to be deleted), every task gets a new live prediction of a new live
    version at once instead (None: never); ``max_deletes``: superseded predictions deleted per round;
    ``tolerance``: a score change at most this large is not written (the scores shown are within it of
    the current ones; predicted classes are always current); ``max_backoff``: longest wait
    (seconds) before a failed push is tried again; ``resync_delay``: seconds after a repeated ``/setup``
    at which the project's predictions are read again. :meth:`start` the thread, :meth:`close` it.
    """

    def __init__(self, backend: LabelStudioBackend, client: LabelStudioClient, *, batch_size: int = 1000,
                 max_updates: int = 20, bulk_above: int | None = 100, workers: int = 1, max_deletes: int = 8,
                 tolerance: float = 1e-3, head: int = 1, max_head: int = 3,
                 max_backoff: float = 30.0, first_backoff: float = 1.0, resync_delay: float = RESYNC_DELAY) -> None:
        self.backend = backend
        self.client = client
        self.batch_size = int(batch_size)
        self.max_updates = int(max_updates)
        self.head = max(1, int(head))
        self.max_head = int(max_head)
        self.bulk_above = None if bulk_above is None else int(bulk_above)
        self.workers = int(workers)
        self.max_deletes = int(max_deletes)
        self.tolerance = float(tolerance)
        self.max_backoff = float(max_backoff)
        self.first_backoff = float(first_backoff)
        self.resync_delay = float(resync_delay)
        self._cond = threading.Condition()
        self._due: dict[str, float] = {}  # project uid -> monotonic time it may be pushed at
        self._stale: set[str] = set()  # projects whose task list must be read again
        self._resync: set[str] = set()  # projects whose predictions must be read again
        self._projects: dict[str, _Pushed] = {}
        self._busy = False
        self._closing = False
        self._thread: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._scorer: ThreadPoolExecutor | None = None  # scores a change while a request is still under way
        self._status: dict[str, Any] = {
            "label_studio_url": client.url, "pushes": 0, "last_push": None, "last_push_s": None,
            "predictions_created": 0, "predictions_updated": 0, "predictions_deleted": 0, "updates_waiting": 0,
            "model_version": None, "last_error": None, "last_error_at": None, "last_head_s": None,
        }
        backend.subscribe(self.notify)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> PredictionPusher:
        with self._cond:
            if self._thread is None:
                self._pool = ThreadPoolExecutor(max_workers=max(1, self.workers), thread_name_prefix="bayesal-ls-push")
                self._scorer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bayesal-ls-score")
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
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        if self._scorer is not None:
            self._scorer.shutdown(wait=False, cancel_futures=True)

    def notify(self, project: str, action: str) -> None:
        """The backend applied ``action`` to ``project`` (a uid): mark it due. Never blocks on Label Studio."""
        if action not in PUSH_ACTIONS:
            return
        with self._cond:
            when = time.monotonic()
            if action == "SETUP":
                # Label Studio calls /setup on every look at the model and before Retrieve predictions: a
                # project seen for the first time is pushed, a known one has its predictions read again
                if project in self._projects:
                    self._resync.add(project)
                    when += self.resync_delay
                else:
                    self._projects[project] = _Pushed()
            if action in TASK_LIST_ACTIONS:
                self._stale.add(project)
            state = self._projects.get(project)
            if state is not None and action != "SETUP":
                state.last_change_at = time.monotonic()
                state.changed_at = state.changed_at or state.last_change_at
                state.changes += 1
                if self._scorer is not None and state.tasks is not None and action not in TASK_LIST_ACTIONS:
                    # the new scores are computed now, while the worker may still wait for a request
                    state.scoring = self._scorer.submit(self._score, project, state, state.tasks, state.changes)
            self._due[project] = min(self._due.get(project, when), when)
            self._cond.notify_all()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until no project is due now (only ones backing off after a failure or waiting to be
        read again) and no push runs; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._busy or any(t <= time.monotonic() for t in self._due.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.05))
            return True

    def status(self) -> dict[str, Any]:
        """The last push (UTC time, seconds taken, predictions created, updated and deleted, live model
        version, updates still waiting), the seconds from the last change (an annotation) to its head
        written (``last_head_s``), the last error, and the projects waiting for a push."""
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
            state = self._projects[uid]
            state.failures = 0
            if state.pending or state.superseded:  # the next round at once (newer changes merge into it)
                self._due[uid] = min(self._due.get(uid, started), started)
            if summary is not None:
                st = self._status
                self._status.update(
                    pushes=st["pushes"] + 1, last_push=_now_iso(), last_push_s=round(time.monotonic() - started, 3),
                    predictions_created=st["predictions_created"] + summary["created"],
                    predictions_updated=st["predictions_updated"] + summary["updated"],
                    predictions_deleted=st["predictions_deleted"] + summary["deleted"],
                    updates_waiting=state.pending, model_version=summary["model_version"],
                )

    # ------------------------------------------------------------------ one round
    def push(self, uid: str) -> dict[str, Any] | None:
        """One round for project ``uid`` now (in the calling thread): what was done (``created``,
        ``updated``, ``deleted``, ``model_version``), or None if Label Studio holds the current scores.
        Raises what the client raises."""
        pid = int(uid.split(".")[0])
        with self._cond:
            state = self._projects.setdefault(uid, _Pushed())
            reread = state.tasks is None or uid in self._stale
            resync = not state.synced or uid in self._resync
            changes, changed_at = state.changes, state.changed_at  # a change from now on gets its own head round
            self._stale.discard(uid)
            self._resync.discard(uid)
        try:
            if reread:
                state.tasks = self.client.tasks(pid)
            family = _family(self.backend.project(uid).model.model_version)
            if state.live_version is None or not state.live_version.startswith(family):
                state.live_version = self._current_live(pid, family)
                resync = True
            live = state.live_version
            if resync or reread:
                self._sync(pid, state, live)
        except Exception:
            with self._cond:
                if reread:
                    self._stale.add(uid)
                self._resync.add(uid)
            raise
        scores = self._scores(uid, state)
        if changed_at is not None:
            log.debug("project %s: scores %.3f s after the change", uid, time.monotonic() - changed_at)
        created = self._create_missing(pid, state, live, scores)
        # the top of the Data Manager's sort first: a task rising to it, or falling from it
        changed = sorted(self._changed(state, scores), key=lambda t: -max(scores[t][0], state.live[t][1]))
        head = self._head(state, scores, changed)
        updated = 0
        if head and len(head) < len(changed) and changed_at is not None and self.max_head > 0 and state.head_round != changes:
            # the first round after a change: the rows the annotator looks at next, alone; when more
            # (falling) tasks decide them, the tasks with the highest new scores show them first
            first = head if len(head) <= self.max_head else sorted(changed, key=lambda t: -scores[t][0])[:self.head]
            state.head_round = changes
            updated = self._update(state, scores, first)
            state.pending = len(changed) - updated
            pointed = self._point_label_studio_at(pid, live) if created or resync else False
            head = [t for t in head if t not in set(first)]
        elif self.bulk_above is not None and len(changed) > self.bulk_above and not state.superseded:
            live = self._switch(pid, state, family, scores)
            created, pointed, state.pending, head = created + len(scores), True, 0, []
        else:
            todo = changed[:self.max_updates]
            updated = self._update(state, scores, todo, changes)
            state.pending = len(changed) - updated
            pointed = self._point_label_studio_at(pid, live) if created or resync else False
            head = [t for t in head if t not in set(todo[:updated])]
        with self._cond:
            if not head and changed_at is not None:  # the head of the changes until this round is written
                if changed or created:
                    self._status["last_head_s"] = round(time.monotonic() - changed_at, 3)
                    log.debug("project %s: head written %.3f s after the change (%d updated, %d created)",
                              uid, self._status["last_head_s"], updated, created)
                state.changed_at = None if state.changes == changes else state.last_change_at
        deleted = 0
        # a change meanwhile stops the deletions: its head is written next, after one request at most
        while not state.pending and state.superseded and deleted < self.max_deletes and state.changes == changes:
            try:
                self.client.delete_prediction(state.superseded[0])
            except LabelStudioAPIError as err:
                if err.status != 404:  # 404: already gone
                    raise
            state.superseded.pop(0)
            deleted += 1
        if not (created or updated or deleted or pointed):
            return None
        return {"created": created, "updated": updated, "deleted": deleted, "model_version": live}

    def _current_live(self, pid: int, family: str) -> str:
        """The live version an ML backend of this model is set to, or the first one."""
        for ml in self.client.ml_backends(pid):
            current = str(ml.get("model_version") or "")
            if current.startswith(family + "live"):
                return current
        return family + "live"

    def _switch(self, pid: int, state: _Pushed, family: str, scores: dict[int, tuple[float, Any]]) -> str:
        """Every task's prediction written at once under the next live version, which Label Studio is
        then set to; the previous live predictions become superseded (deleted one at a time later)."""
        generation = (state.live_version or "")[len(family) + len("live"):]
        live = f"{family}live{int(generation) + 1 if generation.isdigit() else 1}"
        predictions = [{"task": t, "result": r, "score": sc, "model_version": live} for t, (sc, r) in scores.items()]
        for start in range(0, len(predictions), self.batch_size):
            self.client.import_predictions(pid, predictions[start:start + self.batch_size])
        self._point_label_studio_at(pid, live)
        state.live_version = live
        self._sync(pid, state, live)
        lost = [t for t in scores if t not in state.live]
        if lost:
            raise LabelStudioAPIError(f"Label Studio stored {len(scores) - len(lost)} of {len(scores)} predictions "
                                      f"(e.g. task {lost[0]}); it drops a prediction whose score is outside [0, 1]")
        return live

    def _sync(self, pid: int, state: _Pushed, live: str) -> None:
        """Read the project's predictions: this backend's live ones, and its superseded ones."""
        family = _family(live)
        known = {t["id"] for t in state.tasks or []}
        state.live, superseded = {}, []
        for p in sorted(self.client.predictions(pid), key=lambda p: -int(p.get("id") or 0)):
            version, task, pred = str(p.get("model_version") or ""), p.get("task"), p.get("id")
            if not version.startswith(family) or not isinstance(pred, int):
                continue
            if version == live and isinstance(task, int) and task in known and task not in state.live:  # the newest per task is kept
                state.live[task] = (pred, float(p.get("score") or 0.0), _choice(p.get("result")))
            elif version == live or version[len(family):].isdigit() or version[len(family):].startswith("live"):
                superseded.append(pred)
        state.superseded = superseded
        state.synced = True

    def _create_missing(self, pid: int, state: _Pushed, live: str, scores: dict[int, tuple[float, Any]]) -> int:
        missing = [t for t in scores if t not in state.live]
        if not missing:
            return 0
        predictions = [{"task": t, "result": scores[t][1], "score": scores[t][0], "model_version": live} for t in missing]
        created = 0
        for start in range(0, len(predictions), self.batch_size):
            created += self.client.import_predictions(pid, predictions[start:start + self.batch_size])
        self._sync(pid, state, live)  # the import answers a count only: read the new ids
        lost = [t for t in missing if t not in state.live]
        if lost:
            raise LabelStudioAPIError(f"Label Studio stored {len(missing) - len(lost)} of {len(missing)} predictions "
                                      f"(e.g. task {lost[0]}); it drops a prediction whose score is outside [0, 1]")
        return created

    def _scores(self, uid: str, state: _Pushed) -> dict[int, tuple[float, Any]]:
        """task id -> (prediction score, result) of every task, as ``/predict`` answers; computed once
        per model version and task list (the rounds after the first of a change cost no scoring), for
        a change usually ahead of its round (see :meth:`notify`)."""
        scoring = state.scoring
        if scoring is not None:
            try:
                scoring.result()
            except Exception:  # noqa: BLE001 - scored again below, where a failure is reported
                pass
        return self._score(uid, state, state.tasks or [])[2]

    def _score(self, uid: str, state: _Pushed, tasks: list[dict[str, Any]], changes: int | None = None
               ) -> tuple[str, list[dict[str, Any]], dict[int, tuple[float, Any]]]:
        if changes is not None and changes != state.changes:  # a newer change is scored after this one
            return state.scored or ("", [], {})
        version = self.backend.project(uid).model.model_version  # read first: a change meanwhile scores again
        scored = state.scored
        if scored is not None and scored[0] == version and scored[1] is tasks:
            return scored
        results, _ = self.backend.predict(tasks, uid, None)
        scored = (version, tasks, {t["id"]: (float(r["score"]), r["result"]) for t, r in zip(tasks, results)})
        state.scored = scored
        return scored

    def _changed(self, state: _Pushed, scores: dict[int, tuple[float, Any]]) -> list[int]:
        return [t for t, (score, result) in scores.items() if t in state.live and (
            abs(score - state.live[t][1]) > self.tolerance or _choice(result) != state.live[t][2])]

    def _head(self, state: _Pushed, scores: dict[int, tuple[float, Any]], changed: list[int]) -> list[int]:
        """The changed tasks (``changed`` is sorted by ``max(new, stored score)``, highest first) that
        decide the Data Manager's first ``head`` rows: every one whose new or stored score reaches the
        ``head``-th highest new score. Once they are written, those rows are the tasks with the highest
        new scores, showing them (within ``tolerance``)."""
        if not changed:
            return []
        top = sorted((sc for sc, _ in scores.values()), reverse=True)
        bar = top[min(self.head, len(top)) - 1]
        out = []
        for t in changed:
            if max(scores[t][0], state.live[t][1]) < bar:
                break
            out.append(t)
        return out

    def _update(self, state: _Pushed, scores: dict[int, tuple[float, Any]], todo: list[int], changes: int | None = None) -> int:
        """Write the new score and result of the tasks ``todo`` into their live predictions, ``workers``
        at a time; stop early when a change arrives (``state.changes`` is no longer ``changes``): its
        first round comes next. How many were written."""

        def update(task: int) -> int:
            pred = state.live[task][0]
            score, result = scores[task]
            self.client.update_prediction(pred, {"score": score, "result": result})
            return task

        pool, step, written = self._pool, max(1, self.workers), 0
        for start in range(0, len(todo), step):
            if changes is not None and state.changes != changes:
                break
            chunk = todo[start:start + step]
            done = list(pool.map(update, chunk)) if pool is not None and len(chunk) > 1 else [update(t) for t in chunk]
            for task in done:
                score, result = scores[task]
                state.live[task] = (state.live[task][0], score, _choice(result))
            written += len(done)
        return written

    def _point_label_studio_at(self, pid: int, live: str) -> bool:
        """Set the live version on the project's ML backends that serve this model (auto update off, so
        Label Studio keeps it); True if one was changed."""
        family = _family(live)
        changed = False
        for ml in self.client.ml_backends(pid):
            current = str(ml.get("model_version") or "")
            if current.startswith(family) and isinstance(ml.get("id"), int) and (current != live or ml.get("auto_update")):
                # Label Studio 1.23 checks the backend again on a change: it needs the address, project and
                # authentication (an empty password keeps the stored one)
                changes = {"url": ml.get("url"), "project": pid, "model_version": live, "auto_update": False}
                if ml.get("auth_method") == "BASIC_AUTH":
                    changes.update(auth_method="BASIC_AUTH", basic_auth_user=ml.get("basic_auth_user"), basic_auth_pass="")
                self.client.update_ml_backend(ml["id"], changes)
                changed = True
        return changed

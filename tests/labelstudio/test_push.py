"""The prediction pusher against a fake Label Studio (an in-process HTTP server on 127.0.0.1 that
keeps tasks, predictions and ML backends as Label Studio 1.23's REST API does): what is written, in
how many requests, what is deleted, and what happens when Label Studio fails."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

from bayesal.data import Backbone
from bayesal.exceptions import InvalidInputError
from bayesal.labelstudio import (
    BackendSettings,
    LabelStudioAPIError,
    LabelStudioBackend,
    LabelStudioClient,
    PredictionPusher,
)

TOKEN = "t0ken"
PROJECT = 7
CONFIG = ('<View><Text name="text" value="$text"/><Choices name="topic" toName="text">'
          '<Choice value="sport"/><Choice value="business"/><Choice value="tech"/></Choices></View>')
UID = f"{PROJECT}.1700000000"
WORDS = ["goal", "match", "team", "bank", "shares", "profit", "chip", "robot", "code", "final", "market", "app"]


class HashBackbone(Backbone):
    """A cheap deterministic text encoder: word counts hashed into 16 dimensions, L2-normalised."""

    name = "hash16"
    dim = 16

    def encode(self, items, batch_size: int = 64, progress: bool = True) -> np.ndarray:
        out = np.zeros((len(items), self.dim), dtype=np.float32)
        for i, text in enumerate(items):
            for w in str(text).split():
                out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % self.dim] += 1.0
            out[i] /= max(1e-6, float(np.linalg.norm(out[i])))
        return out


class FakeLabelStudio:
    """Label Studio's REST API as the pusher uses it; ``fail`` makes every call answer that status
    (0: close the connection unanswered)."""

    def __init__(self, n_tasks: int, first_task: int = 100) -> None:
        rng = np.random.default_rng(0)
        self.tasks = [{"id": first_task + i, "data": {"text": " ".join(rng.choice(WORDS, 4))}} for i in range(n_tasks)]
        self.predictions: list[dict[str, Any]] = []
        self.next_id = 0
        self.patched: list[int] = []  # task ids whose prediction was updated, in order
        self.gone: set[int] = set()  # prediction ids answered with 404 (deleted by someone else)
        self.ml = [{"id": 3, "model_version": "", "title": "bayesal", "auto_update": True, "url": "http://b"},
                   {"id": 4, "model_version": "other-1", "title": "x", "auto_update": True, "url": "http://x"}]
        self.requests: list[tuple[str, str]] = []
        self.fail: int | None = None
        self.setup: Any = None  # the backend's /setup, which Label Studio calls after a change of an ML backend
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> Any:
                n = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(n)) if n else None

            def _send(self, status: int, body: Any) -> None:
                raw = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _handle(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                q = dict(urllib.parse.parse_qsl(url.query))
                body = self._body()
                with fake.lock:
                    fake.requests.append((self.command, url.path))
                    fail = fake.fail
                if fail == 0:
                    self.close_connection = True
                    self.connection.close()
                    return
                if fail is not None:
                    return self._send(fail, {"detail": "refused by the test"})
                if self.headers.get("Authorization") != f"Token {TOKEN}":
                    return self._send(401, {"detail": "Authentication credentials were not provided."})
                self._send(*fake.answer(self.command, url.path, q, body))

            do_GET = do_POST = do_DELETE = do_PATCH = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def answer(self, method: str, path: str, q: dict[str, str], body: Any) -> tuple[int, Any]:
        with self.lock:
            if method == "GET" and path == "/api/tasks":
                assert q["project"] == str(PROJECT) and q["resolve_uri"] == "0"
                page, size = int(q["page"]), int(q["page_size"])
                return 200, {"tasks": self.tasks[(page - 1) * size:page * size], "total": len(self.tasks)}
            if method == "POST" and path == f"/api/projects/{PROJECT}/import/predictions":
                known = {t["id"] for t in self.tasks}
                if any(p["task"] not in known for p in body):
                    return 400, {"detail": "invalid task"}
                valid = [p for p in body if 0.0 <= p["score"] <= 1.0]  # Label Studio drops the others
                for p in valid:
                    self.add(**p)
                return 201, {"created": len(valid)}
            if method == "GET" and path == "/api/predictions/":
                assert q["project"] == str(PROJECT)
                return 200, [dict(p) for p in self.predictions]
            if path.startswith("/api/predictions/"):
                pid = int(path.strip("/").rsplit("/", 1)[1])
                pred = next((p for p in self.predictions if p["id"] == pid), None)
                if pred is None or pid in self.gone:
                    return 404, {"detail": "Not found."}
                if method == "PATCH":
                    pred.update(body)
                    self.patched.append(pred["task"])
                    return 200, pred
                self.predictions.remove(pred)
                return 204, None
            if method == "GET" and path == "/api/ml":
                return 200, self.ml
            if method == "PATCH" and path.startswith("/api/ml/"):
                ml = next(m for m in self.ml if m["id"] == int(path.rsplit("/", 1)[1]))
                if "url" not in body or body.get("project") != PROJECT:  # Label Studio 1.23 checks the backend again
                    return 500, {"detail": "MLBackend.healthcheck_() missing 1 required positional argument: 'url'"}
                ml.update({k: v for k, v in body.items() if k not in ("url", "project")})
                if self.setup is not None:  # Label Studio asks the backend for its state
                    version = self.setup()
                    if ml["auto_update"]:
                        ml["model_version"] = version
                return 200, ml
        return 404, {"detail": f"no route {method} {path}"}

    def add(self, task: int, model_version: str, score: float, result: Any = ()) -> None:
        self.next_id += 1
        self.predictions.append({"id": self.next_id, "task": task, "model_version": model_version, "score": score,
                                 "result": list(result)})

    def calls(self, method: str, path: str) -> int:
        with self.lock:
            return sum(1 for r in self.requests if r == (method, path))

    def scores(self, version: str) -> dict[int, float]:
        with self.lock:
            return {p["task"]: p["score"] for p in self.predictions if p["model_version"] == version}


@pytest.fixture
def fake():
    servers: list[FakeLabelStudio] = []

    def make(n_tasks: int = 30) -> FakeLabelStudio:
        servers.append(FakeLabelStudio(n_tasks))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


@pytest.fixture
def backend(tmp_path):
    b = LabelStudioBackend(tmp_path / "state", BackendSettings(seed=0, fsync=False), backbones={"text": HashBackbone()})
    yield b
    b.close()


def connect(backend: LabelStudioBackend, ls: FakeLabelStudio) -> str:
    """``/setup`` as Label Studio sends it on connect (the ML backend then holds the model version); the
    live model version the pusher writes."""
    ls.setup = lambda: backend.setup(UID, CONFIG)
    version = backend.setup(UID, CONFIG)
    ls.ml[0]["model_version"] = version
    return version.rsplit("-", 1)[0] + "-live"


def webhook(backend: LabelStudioBackend, annotation: int, task: dict, label: str) -> dict:
    return backend.webhook({
        "action": "ANNOTATION_CREATED",
        "project": {"id": PROJECT, "created_at": "2023-11-14T22:13:20Z", "label_config": CONFIG},
        "task": task,
        "annotation": {"id": annotation, "task": task["id"], "was_cancelled": False,
                       "result": [{"from_name": "topic", "to_name": "text", "type": "choices",
                                   "value": {"choices": [label]}}]},
    })


def expected_scores(backend: LabelStudioBackend, ls: FakeLabelStudio) -> dict[int, float]:
    results, _ = backend.predict(ls.tasks, UID, None)
    return {t["id"]: r["score"] for t, r in zip(ls.tasks, results)}


def test_the_client_refuses_a_bad_url_or_token():
    for url in ("localhost:8080", "ftp://x", ""):
        with pytest.raises(InvalidInputError, match="--label-studio-url"):
            LabelStudioClient(url, TOKEN)
    for token in ("", "  ", "two words"):
        with pytest.raises(InvalidInputError, match="--label-studio-token"):
            LabelStudioClient("http://localhost:8080", token)


def test_a_connect_creates_every_prediction_in_batches_and_an_annotation_updates_them(fake, backend):
    ls = fake(n_tasks=25)
    pusher = PredictionPusher(backend, LabelStudioClient(ls.url, TOKEN), batch_size=10, tolerance=0).start()
    try:
        live = connect(backend, ls)
        assert pusher.flush(30)
        assert ls.calls("POST", f"/api/projects/{PROJECT}/import/predictions") == 3  # 25 tasks, 10 per request
        assert ls.scores(live) == expected_scores(backend, ls)
        assert all(p["result"][0]["value"]["choices"][0] in ("sport", "business", "tech") for p in ls.predictions)
        # Label Studio's score column counts the live version: the ML backend keeps it
        assert ls.ml[0]["model_version"] == live and ls.ml[0]["auto_update"] is False
        assert ls.ml[1]["model_version"] == "other-1" and ls.ml[1]["auto_update"] is True
        status = pusher.status()
        assert status["predictions_created"] == 25 and status["model_version"] == live and status["last_error"] is None
        assert ls.calls("GET", "/api/tasks") == 1

        assert webhook(backend, 1, ls.tasks[0], "sport")["changed"] == 1
        assert pusher.flush(30)
        assert ls.scores(live) == expected_scores(backend, ls)
        assert len(ls.predictions) == 25  # updated in place: nothing piles up
        assert pusher.status()["predictions_updated"] == len(ls.patched) > 0
        assert ls.calls("GET", "/api/tasks") == 1  # the task list is read once
        assert ls.calls("PATCH", "/api/ml/3") == 1  # pointed once

        # Retrieve predictions (Label Studio calls /setup first) left this model's per-event versions: they
        # are deleted, one at a time; another model's and another bayesal folder's predictions stay
        task = ls.tasks[1]["id"]
        with ls.lock:
            old = live.replace("-live", "-1")
            for t in ls.tasks[:3]:
                ls.add(t["id"], old, 0.5)
            ls.add(task, live, 0.5)  # a second live prediction of one task
            ls.add(task, "other-1", 0.5)
            ls.add(task, "bayesal-ffffffff-3", 0.5)
        pusher.resync_delay = 0.0
        backend.setup(UID, CONFIG)
        assert pusher.flush(30)
        assert sorted(p["model_version"] for p in ls.predictions) == sorted(["bayesal-ffffffff-3", "other-1"] + [live] * 25)
        assert ls.calls("DELETE", "/api/projects/7/model-versions/") == 0
        assert ls.scores(live) == expected_scores(backend, ls)
    finally:
        pusher.close()


def test_the_highest_scores_are_updated_first_and_the_rest_follow(fake, backend):
    ls = fake(n_tasks=30)
    pusher = PredictionPusher(backend, LabelStudioClient(ls.url, TOKEN), tolerance=0, max_updates=4,
                              bulk_above=None).start()
    try:
        live = connect(backend, ls)
        assert pusher.flush(30)
        before = ls.scores(live)
        webhook(backend, 1, ls.tasks[0], "tech")
        assert pusher.flush(30)
        after = expected_scores(backend, ls)
        assert ls.scores(live) == after
        changed = [t for t in after if abs(after[t] - before[t]) > 1e-6]
        assert len(changed) > 4 and sorted(ls.patched) == sorted(changed)  # in rounds of 4
        rank = sorted(changed, key=lambda t: -max(after[t], before[t]))
        assert ls.patched[:4] and set(ls.patched[:4]) == set(rank[:4])
    finally:
        pusher.close()


def test_a_change_of_many_scores_is_written_at_once_under_a_new_live_version(fake, backend):
    ls = fake(n_tasks=30)
    pusher = PredictionPusher(backend, LabelStudioClient(ls.url, TOKEN), tolerance=0, bulk_above=3).start()
    try:
        live = connect(backend, ls)
        assert pusher.flush(30)
        webhook(backend, 1, ls.tasks[0], "tech")
        assert pusher.flush(30)
        assert ls.patched == [] and ls.calls("POST", f"/api/projects/{PROJECT}/import/predictions") == 2
        live1 = live + "1"
        assert ls.ml[0]["model_version"] == live1 and pusher.status()["model_version"] == live1
        assert ls.scores(live1) == expected_scores(backend, ls)
        assert ls.scores(live) == {}  # the previous live predictions were deleted, one at a time
        assert ls.calls("DELETE", "/api/projects/7/model-versions/") == 0
        assert sum(1 for m, path in ls.requests if m == "DELETE") == 30
        webhook(backend, 2, ls.tasks[1], "sport")  # and again: the next generation
        assert pusher.flush(30)
        assert {p["model_version"] for p in ls.predictions} == {live + "2"}
        assert ls.scores(live + "2") == expected_scores(backend, ls)
    finally:
        pusher.close()


def test_a_superseded_prediction_deleted_meanwhile_is_not_an_error(fake, backend):
    ls = fake(n_tasks=5)
    pusher = PredictionPusher(backend, LabelStudioClient(ls.url, TOKEN), tolerance=0)  # rounds run here, no thread
    live = connect(backend, ls)
    assert pusher.push(UID)["created"] == 5
    with ls.lock:
        for t in ls.tasks[:2]:
            ls.add(t["id"], live.replace("-live", "-1"), 0.5)
        ls.gone.add(ls.next_id)
    pusher.notify(UID, "SETUP")  # a known project: its predictions are read again
    assert pusher.push(UID)["deleted"] == 2
    assert {p["model_version"] for p in ls.predictions if p["id"] not in ls.gone} == {live}
    assert pusher.push(UID) is None  # nothing left to do


def test_a_burst_of_annotations_is_one_push_of_the_latest_scores(fake, backend):
    ls = fake(n_tasks=40)
    pusher = PredictionPusher(backend, LabelStudioClient(ls.url, TOKEN), tolerance=0, resync_delay=0.0)
    live = connect(backend, ls)
    for k in range(6):  # before the worker runs: all coalesce
        webhook(backend, 10 + k, ls.tasks[k], ["sport", "business", "tech"][k % 3])
    pusher.start()
    try:
        assert pusher.flush(30)
        assert ls.calls("POST", f"/api/projects/{PROJECT}/import/predictions") == 1
        assert ls.patched == []
        assert ls.scores(live) == expected_scores(backend, ls)
        # nothing changed since: a notification costs no request
        n = len(ls.requests)
        pusher.notify(UID, "PROJECT_UPDATED")
        assert pusher.flush(30) and len(ls.requests) == n
    finally:
        pusher.close()


def test_new_tasks_are_read_again_and_created_alone(fake, backend):
    ls = fake(n_tasks=12)
    pusher = PredictionPusher(backend, LabelStudioClient(ls.url, TOKEN), tolerance=0).start()
    try:
        live = connect(backend, ls)
        assert pusher.flush(30)
        ls.tasks.append({"id": 999, "data": {"text": "robot chip code"}})
        backend.webhook({"action": "TASKS_CREATED", "tasks": [ls.tasks[-1]],
                         "project": {"id": PROJECT, "created_at": "2023-11-14T22:13:20Z", "label_config": CONFIG}})
        assert pusher.flush(30)
        assert ls.calls("GET", "/api/tasks") == 2
        assert pusher.status()["predictions_created"] == 13  # the model did not change: only the new task
        assert ls.scores(live) == expected_scores(backend, ls) and ls.patched == []
    finally:
        pusher.close()


def test_scores_label_studio_refuses_are_reported(fake, tmp_path):
    # a seq- strategy scores its picks above 1; Label Studio's import drops a score outside [0, 1]
    b = LabelStudioBackend(tmp_path / "seq", BackendSettings(strategy="seq-margin", seed=0, fsync=False),
                           backbones={"text": HashBackbone()})
    ls = fake(n_tasks=20)
    pusher = PredictionPusher(b, LabelStudioClient(ls.url, TOKEN), tolerance=0, max_backoff=60).start()
    try:
        connect(b, ls)
        deadline = time.monotonic() + 10
        while pusher.status()["last_error"] is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "outside [0, 1]" in pusher.status()["last_error"]
    finally:
        pusher.close()
        b.close()


@pytest.mark.parametrize("failure", [401, 400, 500, 0])
def test_a_failing_label_studio_never_blocks_or_loses_an_annotation(fake, backend, failure):
    ls = fake(n_tasks=10)
    pusher = PredictionPusher(backend, LabelStudioClient(ls.url, TOKEN, timeout=5), tolerance=0, first_backoff=0.2, max_backoff=0.4)
    pusher.start()
    try:
        live = connect(backend, ls)
        assert pusher.flush(30)
        ls.fail = failure
        t0 = time.monotonic()
        assert webhook(backend, 1, ls.tasks[0], "sport")["changed"] == 1
        assert time.monotonic() - t0 < 1.0  # the webhook did not wait for Label Studio
        deadline = time.monotonic() + 10
        while pusher.status()["last_error"] is None and time.monotonic() < deadline:
            time.sleep(0.02)
        status = pusher.status()
        assert status["last_error"] and UID in status["last_error"]
        if failure:
            assert f"HTTP {failure}" in status["last_error"]
        if failure == 401:
            assert "--label-studio-token" in status["last_error"]
        assert status["due"] == [UID]  # still due: tried again after a back-off
        n = len(ls.requests)
        time.sleep(0.9)
        assert 1 <= len(ls.requests) - n <= 30  # backing off (0.2 s, then 0.4 s), not spinning

        # the annotation is in the model; when Label Studio answers again the scores arrive
        assert backend.project(UID).model.labeled_tasks() == {ls.tasks[0]["id"]: ("sport",)}
        ls.fail = None
        deadline = time.monotonic() + 10
        while ls.scores(live) != expected_scores(backend, ls) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ls.scores(live) == expected_scores(backend, ls)
        assert pusher.flush(30) and pusher.status()["due"] == []
    finally:
        pusher.close()


def test_a_wrong_token_is_reported_as_such(fake):
    ls = fake(n_tasks=3)
    with pytest.raises(LabelStudioAPIError, match="HTTP 401") as err:
        LabelStudioClient(ls.url, "wrong").tasks(PROJECT)
    assert err.value.status == 401
    with pytest.raises(LabelStudioAPIError, match="did not answer"):
        LabelStudioClient("http://127.0.0.1:9", TOKEN, timeout=2).tasks(PROJECT)


def test_health_shows_the_push_status(fake, backend):
    pytest.importorskip("fastapi", reason="the serve extra (FastAPI) is not installed")
    from fastapi.testclient import TestClient

    from bayesal.labelstudio import create_app

    ls = fake(n_tasks=5)
    pusher = PredictionPusher(backend, LabelStudioClient(ls.url, TOKEN), tolerance=0)
    with TestClient(create_app(backend, pusher=pusher)) as client:  # the app starts and stops the pusher
        connect(backend, ls)
        assert pusher.flush(30)
        push = client.get("/health").json()["push"]
        assert push["predictions_created"] == 5 and push["last_push"] and push["label_studio_url"] == ls.url
    assert pusher._thread is not None and not pusher._thread.is_alive()


def test_the_first_round_after_an_annotation_writes_the_head_alone(fake, backend, monkeypatch):
    # the Data Manager's first row is current after the head's few requests; the rest follow, scored once
    ls = fake(n_tasks=30)
    pusher = PredictionPusher(backend, LabelStudioClient(ls.url, TOKEN), tolerance=0, max_head=30, bulk_above=None,
                              max_updates=100)  # rounds run here, no thread
    live = connect(backend, ls)
    webhook(backend, 1, ls.tasks[0], "sport")
    while pusher.push(UID) is not None:  # scores that differ between tasks
        pass
    before = ls.scores(live)
    predicted = []
    original = backend.predict
    monkeypatch.setattr(backend, "predict", lambda *a: predicted.append(1) or original(*a))
    ls.patched.clear()
    webhook(backend, 2, ls.tasks[1], "tech")
    after = expected_scores(backend, ls)
    predicted.clear()
    top = max(after.values())
    changed = [t for t in after if after[t] != before[t]]
    head = [t for t in changed if max(after[t], before[t]) >= top]
    assert 0 < len(head) < len(changed)

    first = pusher.push(UID)
    assert first["updated"] == len(head) and sorted(ls.patched) == sorted(head)
    assert ls.patched == sorted(head, key=lambda t: -max(after[t], before[t]))
    stored = ls.scores(live)
    assert after[max(stored, key=stored.__getitem__)] == top == max(stored.values())  # the first row is current
    assert pusher.status()["last_head_s"] is not None and pusher.status()["updates_waiting"] == 0  # not pushed by _run

    second = pusher.push(UID)
    assert second["updated"] == len(changed) - len(head) and ls.scores(live) == after
    assert len(predicted) == 1  # the model did not change between the rounds: scored once
    assert pusher.push(UID) is None


def test_a_large_head_is_not_written_alone(fake, backend):
    ls = fake(n_tasks=30)
    pusher = PredictionPusher(backend, LabelStudioClient(ls.url, TOKEN), tolerance=0, max_head=0, bulk_above=None,
                              max_updates=100)
    live = connect(backend, ls)
    pusher.push(UID)
    webhook(backend, 1, ls.tasks[0], "tech")
    assert pusher.push(UID)["updated"] > 1 and ls.scores(live) == expected_scores(backend, ls)


def test_deletions_stop_at_a_change(fake, backend, monkeypatch):
    ls = fake(n_tasks=5)
    pusher = PredictionPusher(backend, LabelStudioClient(ls.url, TOKEN), tolerance=0, max_deletes=8)  # no thread
    live = connect(backend, ls)
    assert pusher.push(UID)["created"] == 5
    with ls.lock:
        for t in ls.tasks:
            ls.add(t["id"], live.replace("-live", "-1"), 0.5)
    pusher.notify(UID, "SETUP")  # its predictions are read again: 5 superseded
    original = pusher.client.delete_prediction

    def delete_then_annotate(prediction: int) -> None:
        original(prediction)
        pusher.notify(UID, "ANNOTATION_CREATED")  # an annotation arrives while deleting

    monkeypatch.setattr(pusher.client, "delete_prediction", delete_then_annotate)
    assert pusher.push(UID)["deleted"] == 1  # the change's round comes next, not seven more deletions
    monkeypatch.setattr(pusher.client, "delete_prediction", original)
    while pusher.push(UID) is not None:
        pass
    assert {p["model_version"] for p in ls.predictions} == {live} and len(ls.predictions) == 5


def test_a_change_is_scored_once_ahead_of_its_round(fake, backend, monkeypatch):
    ls = fake(n_tasks=20)
    pusher = PredictionPusher(backend, LabelStudioClient(ls.url, TOKEN), tolerance=0, bulk_above=None).start()
    try:
        live = connect(backend, ls)
        assert pusher.flush(30)
        threads = []
        original = backend.predict
        monkeypatch.setattr(backend, "predict", lambda *a: threads.append(threading.current_thread().name) or original(*a))
        webhook(backend, 1, ls.tasks[0], "tech")
        assert pusher.flush(30)
        assert len(threads) == 1 and threads[0].startswith("bayesal-ls-score")  # in the scorer, once for all rounds
        monkeypatch.setattr(backend, "predict", original)
        assert ls.scores(live) == expected_scores(backend, ls)
    finally:
        pusher.close()

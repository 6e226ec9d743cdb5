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
        self.ml = [{"id": 3, "model_version": "", "title": "bayesal"}, {"id": 4, "model_version": "other-1", "title": "x"}]
        self.requests: list[tuple[str, str]] = []
        self.fail: int | None = None
        self.refresh: Any = None  # what GET /api/ml/<id> does (Label Studio calls the backend's /setup)
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _body(self) -> Any:
                n = int(self.headers.get("Content-Length") or 0)
                return json.loads(self.rfile.read(n)) if n else None

            def _send(self, status: int, body: Any) -> None:
                raw = json.dumps(body).encode()
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

            do_GET = do_POST = do_DELETE = _handle

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
                self.predictions.extend(body)
                return 201, {"created": len(body)}
            if method == "GET" and path == "/api/ml":
                return 200, self.ml
            if method == "GET" and path.startswith("/api/ml/"):
                ml = next(m for m in self.ml if m["id"] == int(path.rsplit("/", 1)[1]))
                if self.refresh is not None:
                    ml["model_version"] = self.refresh()
                return 200, ml
            if path == f"/api/projects/{PROJECT}/model-versions/":
                if method == "GET":
                    counts: dict[str, int] = {}
                    for p in self.predictions:
                        counts[p["model_version"]] = counts.get(p["model_version"], 0) + 1
                    return 200, counts
                before = len(self.predictions)
                self.predictions = [p for p in self.predictions if p["model_version"] != body["model_version"]]
                return 200, {"deleted_predictions": before - len(self.predictions)}
        return 404, {"detail": f"no route {method} {path}"}

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
    """``/setup`` as Label Studio sends it on connect; the ML backend then holds the model version."""
    version = backend.setup(UID, CONFIG)
    ls.ml[0]["model_version"] = version
    ls.refresh = lambda: backend.setup(UID, CONFIG)
    return version


def webhook(backend: LabelStudioBackend, ls: FakeLabelStudio, annotation: int, task: dict, label: str) -> dict:
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


def test_a_connect_pushes_every_task_in_batches_and_an_annotation_replaces_them(fake, backend):
    ls = fake(n_tasks=25)
    pusher = PredictionPusher(backend, LabelStudioClient(ls.url, TOKEN), batch_size=10).start()
    try:
        v0 = connect(backend, ls)
        assert pusher.flush(30)
        assert ls.calls("POST", f"/api/projects/{PROJECT}/import/predictions") == 3  # 25 tasks, 10 per request
        assert ls.scores(v0) == expected_scores(backend, ls)
        assert all(p["result"][0]["value"]["choices"][0] in ("sport", "business", "tech") for p in ls.predictions)
        status = pusher.status()
        assert status["tasks_pushed"] == 25 and status["model_version"] == v0 and status["last_error"] is None
        assert ls.calls("GET", "/api/tasks") == 1

        task = ls.tasks[0]
        assert webhook(backend, ls, 1, task, "sport")["changed"] == 1
        assert pusher.flush(30)
        v1 = backend.project(UID).model.model_version
        assert v1 != v0
        assert ls.ml[0]["model_version"] == v1  # Label Studio re-read the backend's version: its score column counts v1
        assert ls.ml[1]["model_version"] == "other-1"
        assert ls.scores(v1) == expected_scores(backend, ls)
        assert ls.scores(v0) == {}  # the superseded predictions are gone
        assert {p["model_version"] for p in ls.predictions} == {v1}
        assert pusher.status()["predictions_deleted"] == 25
        assert ls.calls("GET", "/api/tasks") == 1  # the task list is read once

        # another model's and another bayesal folder's predictions stay
        ls.predictions += [{"task": task["id"], "score": 0.5, "model_version": "other-1", "result": []},
                           {"task": task["id"], "score": 0.5, "model_version": "bayesal-ffffffff-3", "result": []}]
        webhook(backend, ls, 2, ls.tasks[1], "tech")
        assert pusher.flush(30)
        v2 = backend.project(UID).model.model_version
        assert {p["model_version"] for p in ls.predictions} == {v2, "other-1", "bayesal-ffffffff-3"}
    finally:
        pusher.close()


def test_a_burst_of_annotations_is_one_push_of_the_latest_scores(fake, backend):
    ls = fake(n_tasks=40)
    pusher = PredictionPusher(backend, LabelStudioClient(ls.url, TOKEN))
    connect(backend, ls)
    for k in range(6):  # before the worker runs: all coalesce
        webhook(backend, ls, 10 + k, ls.tasks[k], ["sport", "business", "tech"][k % 3])
    pusher.start()
    try:
        assert pusher.flush(30)
        assert ls.calls("POST", f"/api/projects/{PROJECT}/import/predictions") == 1
        latest = backend.project(UID).model.model_version
        assert {p["model_version"] for p in ls.predictions} == {latest}
        assert ls.scores(latest) == expected_scores(backend, ls)
        # nothing changed since: a notification costs no request
        n = len(ls.requests)
        pusher.notify(UID, "PROJECT_UPDATED")
        assert pusher.flush(30) and len(ls.requests) == n
    finally:
        pusher.close()


def test_new_tasks_are_read_again_and_pushed_alone(fake, backend):
    ls = fake(n_tasks=12)
    pusher = PredictionPusher(backend, LabelStudioClient(ls.url, TOKEN)).start()
    try:
        v0 = connect(backend, ls)
        assert pusher.flush(30)
        ls.tasks.append({"id": 999, "data": {"text": "robot chip code"}})
        backend.webhook({"action": "TASKS_CREATED", "tasks": [ls.tasks[-1]],
                         "project": {"id": PROJECT, "created_at": "2023-11-14T22:13:20Z", "label_config": CONFIG}})
        assert pusher.flush(30)
        assert ls.calls("GET", "/api/tasks") == 2
        assert pusher.status()["tasks_pushed"] == 1  # the model did not change: only the new task
        assert ls.scores(v0) == expected_scores(backend, ls)
    finally:
        pusher.close()


@pytest.mark.parametrize("failure", [401, 400, 500, 0])
def test_a_failing_label_studio_never_blocks_or_loses_an_annotation(fake, backend, failure):
    ls = fake(n_tasks=10)
    pusher = PredictionPusher(backend, LabelStudioClient(ls.url, TOKEN, timeout=5), first_backoff=0.2, max_backoff=0.4)
    pusher.start()
    try:
        connect(backend, ls)
        assert pusher.flush(30)
        ls.fail = failure
        t0 = time.monotonic()
        assert webhook(backend, ls, 1, ls.tasks[0], "sport")["changed"] == 1
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
        assert 1 <= len(ls.requests) - n <= 6  # backing off (0.2 s, then 0.4 s), not spinning

        # the annotation is in the model; when Label Studio answers again the scores arrive
        assert backend.project(UID).model.labeled_tasks() == {ls.tasks[0]["id"]: ("sport",)}
        ls.fail = None
        deadline = time.monotonic() + 10
        latest = backend.project(UID).model.model_version
        while ls.scores(latest) != expected_scores(backend, ls) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert ls.scores(latest) == expected_scores(backend, ls)
        assert pusher.flush(30) and pusher.status()["due"] == []
    finally:
        pusher.close()


def test_a_wrong_token_is_reported_as_such(fake, backend):
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
    pusher = PredictionPusher(backend, LabelStudioClient(ls.url, TOKEN))
    with TestClient(create_app(backend, pusher=pusher)) as client:  # the app starts and stops the pusher
        connect(backend, ls)
        assert pusher.flush(30)
        push = client.get("/health").json()["push"]
        assert push["tasks_pushed"] == 5 and push["last_push"] and push["label_studio_url"] == ls.url
    assert pusher._thread is not None and not pusher._thread.is_alive()

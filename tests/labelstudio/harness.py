"""Test harness: a real Label Studio server and the bayesal backend, both on 127.0.0.1.

Used by the integration test and by ``record_label_studio_bodies.py`` (which stores the request bodies
Label Studio sends as the JSON fixtures of the unit tests). Label Studio is found through
``BAYESAL_LABEL_STUDIO`` (the path of its ``label-studio`` executable, e.g. ``.lsvenv/bin/label-studio``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ENV_VAR = "BAYESAL_LABEL_STUDIO"
#: Optional: a Label Studio data dir whose database is already migrated (`label-studio version --data-dir
#: DIR` makes one); its database is copied into each new server's data dir, saving the first start's
#: migrations (a minute or more).
TEMPLATE_VAR = "BAYESAL_LABEL_STUDIO_DB_TEMPLATE"
DB_NAME = "label_studio.sqlite3"
USER = "bayesal@example.com"
PASSWORD = "bayesal-test-pass"
TOKEN = "b" * 40  # a legacy API token Label Studio accepts as "Token <TOKEN>"
#: Label Studio feature flag: the Data Manager's "Prediction score" is then the mean over the predictions
#: of the connected model's current version (off, it only counts predictions named like the model's title)
SCORE_OF_CURRENT_VERSION_FLAG = "ff_front_dev_1682_model_version_dropdown_070622_short"

TEXT_CONFIG = (
    '<View><Text name="text" value="$text"/>'
    '<Choices name="topic" toName="text" choice="single">'
    '<Choice value="sport"/><Choice value="business"/><Choice value="tech"/></Choices></View>'
)

TEXTS = [
    ("The striker scored twice as the home side won the derby", "sport"),
    ("The champions lost the final after a penalty shoot-out", "sport"),
    ("Shares fell sharply after the bank reported lower profits", "business"),
    ("The company agreed a takeover worth two billion dollars", "business"),
    ("The new smartphone chip doubles the battery life", "tech"),
    ("Engineers released an update that fixes the browser bug", "tech"),
    ("The coach praised his defenders after the clean sheet", "sport"),
    ("Oil prices rose as investors worried about supply", "business"),
    ("A start-up unveiled a robot that sorts recycling", "tech"),
    ("The tennis star reached her third grand slam final", "sport"),
]


def label_studio_executable() -> str | None:
    """The ``label-studio`` executable named by ``BAYESAL_LABEL_STUDIO``, if it exists."""
    exe = os.environ.get(ENV_VAR)
    if exe and (shutil.which(exe) or Path(exe).is_file()):
        return exe
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabelStudio:
    """A Label Studio server started as a subprocess on 127.0.0.1, driven through its REST API."""

    def __init__(self, proc: subprocess.Popen, url: str, log_path: Path) -> None:
        self.proc, self.url, self.log_path = proc, url, log_path
        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Token {TOKEN}"}, timeout=120)

    @classmethod
    def start(cls, exe: str, data_dir: Path, *, port: int | None = None, timeout: float = 900.0) -> LabelStudio:
        """Start Label Studio (offline; the first start migrates its database, minutes) and wait until
        it answers; raise ``RuntimeError`` with the log's tail if it exits or ``timeout`` passes."""
        port = port or free_port()
        data_dir.mkdir(parents=True, exist_ok=True)
        ls_data = data_dir / "ls-data"
        template = Path(os.environ.get(TEMPLATE_VAR, "")) / DB_NAME
        if os.environ.get(TEMPLATE_VAR) and template.is_file() and not ls_data.exists():
            ls_data.mkdir()
            shutil.copy2(template, ls_data / DB_NAME)
        env = dict(os.environ)
        env.update({
            "ML_BLOCK_LOCAL_IP": "false",  # let it call a backend on 127.0.0.1
            "SSRF_PROTECTION_ENABLED": "false",  # ... and post webhooks there
            "COLLECT_ANALYTICS": "false",
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(data_dir),
            "WEBHOOK_TIMEOUT": "30",
            SCORE_OF_CURRENT_VERSION_FLAG: "true",
        })
        log_path = data_dir / "label-studio.log"
        log = open(log_path, "wb")
        proc = subprocess.Popen(
            [exe, "start", "--no-browser", "--internal-host", "127.0.0.1", "-p", str(port),
             "--data-dir", str(ls_data), "--username", USER, "--password", PASSWORD,
             "--user-token", TOKEN, "--enable-legacy-api-token"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        log.close()
        server = cls(proc, f"http://127.0.0.1:{port}", log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"Label Studio exited with code {proc.returncode}:\n{server.log_tail()}")
            try:
                if server.http.get("/api/projects", timeout=5).status_code == 200 and proc.poll() is None:
                    return server
            except httpx.HTTPError:
                pass
            time.sleep(2)
        server.stop()
        raise RuntimeError(f"Label Studio did not answer within {timeout:.0f} s:\n{server.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        self.http.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=30)

    # ------------------------------------------------------------------ REST API
    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self.http.request(method, path, **kwargs)
        if r.status_code >= 400:
            raise RuntimeError(f"{method} {path} -> {r.status_code}: {r.text[:2000]}")
        return r.json() if r.content else None

    def create_project(self, title: str, label_config: str) -> int:
        return self.api("POST", "/api/projects", json={"title": title, "label_config": label_config})["id"]

    def import_tasks(self, project: int, tasks: list[dict[str, Any]]) -> list[int]:
        self.api("POST", f"/api/projects/{project}/import", json=tasks)
        return [t["id"] for t in self.tasks(project)]

    def tasks(self, project: int) -> list[dict[str, Any]]:
        out = self.api("GET", "/api/tasks", params={"project": project, "page_size": 1000, "fields": "all"})
        return out["tasks"] if isinstance(out, dict) else out

    def connect_backend(self, project: int, url: str, title: str = "bayesal") -> dict[str, Any]:
        return self.api("POST", "/api/ml", json={"project": project, "url": url, "title": title, "is_interactive": False})

    def ml_backend(self, ml_id: int) -> dict[str, Any]:
        return self.api("GET", f"/api/ml/{ml_id}")

    def retrieve_predictions(self, project: int) -> Any:
        """Data Manager action "Retrieve predictions" on all tasks."""
        return self.api("POST", "/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": project},
                        json={"selectedItems": {"all": True, "excluded": []}})

    def delete_predictions(self, project: int) -> Any:
        """Data Manager action "Delete predictions" on all tasks."""
        return self.api("POST", "/api/dm/actions", params={"id": "delete_tasks_predictions", "project": project},
                        json={"selectedItems": {"all": True, "excluded": []}})

    def tasks_by_score(self, project: int) -> list[dict[str, Any]]:
        """The project's tasks as a Data Manager view sorted by "Prediction score", highest first."""
        view = self.api("POST", "/api/dm/views", json={"project": project, "data": {"ordering": ["-tasks:predictions_score"]}})
        out = self.api("GET", "/api/tasks", params={"view": view["id"], "project": project, "page_size": 1000})
        return out["tasks"] if isinstance(out, dict) else out

    def predictions(self, project: int) -> list[dict[str, Any]]:
        return self.api("GET", "/api/predictions/", params={"project": project})

    def annotate(self, task: int, choice: str, from_name: str = "topic", to_name: str = "text") -> int:
        body = {"result": [choice_result(choice, from_name, to_name)], "was_cancelled": False, "lead_time": 1.5}
        return self.api("POST", f"/api/tasks/{task}/annotations/", json=body)["id"]

    def update_annotation(self, annotation: int, choice: str, from_name: str = "topic", to_name: str = "text") -> Any:
        return self.api("PATCH", f"/api/annotations/{annotation}/", json={"result": [choice_result(choice, from_name, to_name)]})

    def delete_annotation(self, annotation: int) -> None:
        self.api("DELETE", f"/api/annotations/{annotation}/")

    def start_training(self, ml_id: int) -> Any:
        return self.api("POST", f"/api/ml/{ml_id}/train", json={"use_ground_truth": False})

    def versions(self, ml_id: int) -> Any:
        return self.api("GET", f"/api/ml/{ml_id}/versions")


def choice_result(choice: str, from_name: str = "topic", to_name: str = "text") -> dict[str, Any]:
    return {"from_name": from_name, "to_name": to_name, "type": "choices", "value": {"choices": [choice]}}


class ThreadedServer:
    """An ASGI app served by uvicorn in a thread on 127.0.0.1; ``stop()`` ends it."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        import uvicorn

        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, name="bayesal-test-backend", daemon=True)

    def start(self, timeout: float = 30.0) -> ThreadedServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the backend did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)


def recording_middleware(store: list[dict[str, Any]]) -> Callable[..., Any]:
    """An HTTP middleware that appends ``{method, path, body}`` of every request to ``store``."""

    async def record(request, call_next):
        raw = await request.body()
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        store.append({"method": request.method, "path": request.url.path, "body": body})
        return await call_next(request)

    return record

"""Record the request bodies a real Label Studio sends to an ML backend, as the unit tests' fixtures.

Run with Label Studio installed in its own virtual environment::

    BAYESAL_LABEL_STUDIO=.lsvenv/bin/label-studio PYTHONPATH=src python tests/labelstudio/record_label_studio_bodies.py

It starts Label Studio and the bayesal backend on 127.0.0.1 (the backend records every request),
walks through what a user does — connect the model, retrieve predictions, create, change and delete
an annotation, start training, edit the labeling config, delete a task — for a text project and an
image project, and writes one JSON file per kind of request to ``fixtures/`` (API and project
tokens replaced by a placeholder).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bayesal.labelstudio import BackendSettings, LabelStudioBackend, create_app

sys.path.insert(0, str(Path(__file__).parent))
from harness import TEXT_CONFIG, TEXTS, LabelStudio, ThreadedServer, label_studio_executable, recording_middleware  # noqa: E402

FIXTURES = Path(__file__).with_name("fixtures")
IMAGE_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<Choices name="shape" toName="image"><Choice value="dark"/><Choice value="light"/></Choices></View>'
)


def _name(rec: dict[str, Any], project_kind: str) -> str:
    path = rec["path"].strip("/") or "root"
    body = rec["body"]
    if path == "webhook" and isinstance(body, dict):
        return f"{project_kind}_webhook_{body.get('action', 'unknown').lower()}"
    return f"{project_kind}_{path}_{rec['method'].lower()}"


def _redact(obj: Any) -> None:
    """Replace API and project tokens by a placeholder, in place."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            if key in ("access_token", "token") and isinstance(value, str) and value:
                obj[key] = "<redacted>"
            else:
                _redact(value)
    elif isinstance(obj, list):
        for value in obj:
            _redact(value)


def _save(records: list[dict[str, Any]], project_kind: str) -> list[str]:
    written = []
    for rec in records:
        _redact(rec)
        name = _name(rec, project_kind)
        path = FIXTURES / f"{name}.json"
        if name in written:  # keep the first of each kind
            continue
        path.write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n")
        written.append(name)
    return written


def main() -> int:
    exe = label_studio_executable()
    if exe is None:
        print("set BAYESAL_LABEL_STUDIO to the label-studio executable", file=sys.stderr)
        return 2
    FIXTURES.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        records: list[dict[str, Any]] = []
        (tmp_path / "ls").mkdir()
        backend = LabelStudioBackend(tmp_path / "state", BackendSettings(seed=0, fsync=False, files_root=str(tmp_path / "ls")))
        app = create_app(backend)
        app.middleware("http")(recording_middleware(records))
        server = ThreadedServer(app).start()
        ls = LabelStudio.start(exe, tmp_path / "ls")
        try:
            # text project
            pid = ls.create_project("bayesal text", TEXT_CONFIG)
            task_ids = ls.import_tasks(pid, [{"data": {"text": t}} for t, _ in TEXTS[:6]])
            ml = ls.connect_backend(pid, server.url)
            ls.retrieve_predictions(pid)
            ann = ls.annotate(task_ids[0], "sport")
            ls.update_annotation(ann, "tech")
            ls.delete_annotation(ann)
            ls.annotate(task_ids[1], "sport")
            ls.start_training(ml["id"])
            ls.versions(ml["id"])
            ls.api("PATCH", f"/api/projects/{pid}", json={"label_config": TEXT_CONFIG.replace(
                '<Choice value="tech"/>', '<Choice value="tech"/><Choice value="politics"/>')})
            ls.api("DELETE", f"/api/tasks/{task_ids[5]}/")
            ls.retrieve_predictions(pid)
            print("text:", _save(records, "text"))
            records.clear()

            # image project: files under Label Studio's local-files root
            from PIL import Image

            for i, v in enumerate((30, 220)):
                Image.fromarray(np.full((24, 32, 3), v, dtype=np.uint8)).save(tmp_path / "ls" / f"img{i}.png")
            pid = ls.create_project("bayesal images", IMAGE_CONFIG)
            task_ids = ls.import_tasks(pid, [{"data": {"image": f"/data/local-files/?d=img{i}.png"}} for i in range(2)])
            ls.connect_backend(pid, server.url)
            ls.retrieve_predictions(pid)
            ls.annotate(task_ids[0], "dark", from_name="shape", to_name="image")
            print("image:", _save(records, "image"))
        finally:
            ls.stop()
            server.stop()
            backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

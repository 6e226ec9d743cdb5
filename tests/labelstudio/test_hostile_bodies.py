"""Malformed and hostile bodies, files and disks at the Label Studio backend: each is a clear JSON error
(4xx for the request, 503 for the disk), never a traceback, and none changes the model."""

from __future__ import annotations

import copy
import errno
import hashlib
import json
import os
import struct
import zlib

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from bayesal.exceptions import InvalidInputError  # noqa: E402
from bayesal.labelstudio import BackendSettings, LabelStudioBackend, create_app  # noqa: E402

IMAGE_CONFIG = ('<View><Image name="img" value="$image"/><Choices name="c" toName="img">'
                '<Choice value="a"/><Choice value="b"/></Choices></View>')


class _HashBackbone:
    """A deterministic stand-in for the frozen encoder (bytes of each item's SHA-256)."""

    name = "hash"
    dim = 8

    def config(self):
        return {"name": self.name, "dim": self.dim}

    def encode(self, items, batch_size=64, progress=True):
        keys = [str(t) if isinstance(t, str) else str(np.asarray(t).shape) for t in items]
        return np.array([np.frombuffer(hashlib.sha256(k.encode()).digest()[: self.dim], dtype=np.uint8)
                         for k in keys], dtype=np.float32) / 255.0


@pytest.fixture
def backend_client(tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    backend = LabelStudioBackend(tmp_path / "state", BackendSettings(seed=0, fsync=False, files_root=str(files)),
                                 backbones={"text": _HashBackbone(), "image": _HashBackbone()})
    with TestClient(create_app(backend), raise_server_exceptions=False) as client:
        yield client, backend, files


def _refused(r, low=400, high=500):
    assert low <= r.status_code < high, (r.status_code, r.text)
    body = r.json()
    assert isinstance(body.get("error"), str) and body["error"] and "Traceback" not in body["error"]
    return body["error"]


def _mutations(recorded):
    created = recorded("text_webhook_annotation_created")

    def edit(fn, base=None):
        body = copy.deepcopy(base if base is not None else created)
        fn(body)
        return body

    deleted, tasks_deleted = recorded("text_webhook_annotations_deleted"), recorded("text_webhook_tasks_deleted")
    return {
        "annotation: 5": edit(lambda b: b.update(annotation=5)),
        "annotations: 5": edit(lambda b: b.update(annotations=5), deleted),
        "tasks: 5": edit(lambda b: b.update(tasks=5), tasks_deleted),
        "a list as task id": edit(lambda b: (b["task"].update(id=[1]), b["annotation"].update(task=[1]))),
        "a dict as task id": edit(lambda b: b["annotation"].update(task={"a": 1})),
        "result: 5": edit(lambda b: b["annotation"].update(result=5)),
        "choices: 5": edit(lambda b: b["annotation"]["result"][0]["value"].update(choices=5)),
        "300-digit project id": edit(lambda b: b["project"].update(id=10**300)),
        "project id true": edit(lambda b: b["project"].update(id=True)),
        "negative project id": edit(lambda b: b["project"].update(id=-1)),
        "unreadable created_at": edit(lambda b: b["project"].update(created_at="9" * 40)),
    }


def test_malformed_webhooks_are_clear_errors_and_change_nothing(backend_client, recorded):
    client, backend, _ = backend_client
    created = recorded("text_webhook_annotation_created")
    assert client.post("/webhook", json=created).status_code == 201
    before = client.post("/predict", json=recorded("text_predict_post")).json()
    for name, body in _mutations(recorded).items():
        r = client.post("/webhook", json=body)
        assert r.status_code == 400, name
        _refused(r)
    raw = json.dumps(created).replace('"id": 1, "import_id"', '"id": NaN, "import_id"')
    _refused(client.post("/webhook", content=raw, headers={"Content-Type": "application/json"}))
    for raw in ('{"action": NaN}', '{"action": "ANNOTATION_CREATED", "project": {"id": Infinity}}', "[1]", "{",
                '{"project": ' + "9" * 5000 + "}", b"\xff\xfe{"):
        _refused(client.post("/webhook", content=raw, headers={"Content-Type": "application/json"}))
    surrogate = copy.deepcopy(created)
    surrogate["annotation"]["id"] = 99
    raw = json.dumps(surrogate).replace('"data": {"text": "', '"data": {"text": "\\ud800')
    assert "not valid Unicode" in _refused(client.post("/webhook", content=raw, headers={"Content-Type": "application/json"}))
    raw = json.dumps({"action": "\ud800", "project": created["project"]})
    r = client.post("/webhook", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 201 and r.json()["status"] == "ignored"
    assert not list(backend.state_dir.glob("project-True*")) and len(list(backend.state_dir.glob("project-*"))) == 1
    assert client.post("/predict", json=recorded("text_predict_post")).json() == before


def test_malformed_project_ids_and_tasks_at_setup_and_predict(backend_client, recorded):
    client, _, _ = backend_client
    setup = recorded("text_setup_post")
    for project in (True, "1" + "0" * 300, "1." + "9" * 300, [1], None, 1.5, "١"):
        _refused(client.post("/setup", json=dict(setup, project=project)))
    assert client.post("/setup", json=setup).status_code == 200
    pbody = recorded("text_predict_post")
    for tasks in ([{"id": [1], "data": {"text": "x"}}], [{"id": True, "data": {"text": "x"}}], [{"data": {"text": "x"}}]):
        _refused(client.post("/predict", json=dict(pbody, tasks=tasks)))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` pixels (its data is a stub: decoding it would fail)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def _image_webhook(recorded, ref: str, annotation_id: int = 1) -> dict:
    body = copy.deepcopy(recorded("image_webhook_annotation_created"))
    body["annotation"]["id"] = annotation_id
    body["task"]["data"]["image"] = ref
    return body


def test_hostile_image_references_are_refused_without_hanging(backend_client, recorded):
    pytest.importorskip("PIL")
    client, backend, files = backend_client
    (files / "giant.png").write_bytes(_png_header_only(20_000, 10_000))  # Pillow's own bomb check
    (files / "big.png").write_bytes(_png_header_only(9_000, 9_000))  # ours, below Pillow's
    os.mkfifo(files / "pipe.png")
    for ref, why in (("/data/local-files/?d=ok.png%00", "NUL"),
                     ("/data/local-files/?d=giant.png", "pixels"),
                     ("/data/local-files/?d=big.png", "over the limit"),
                     ("/data/local-files/?d=pipe.png", "not a regular file")):
        assert why in _refused(client.post("/webhook", json=_image_webhook(recorded, ref)))
    assert backend.close() is None


def test_a_missing_files_root_is_refused_at_start(tmp_path):
    with pytest.raises(InvalidInputError, match="--files-root"):
        BackendSettings(files_root=str(tmp_path / "nowhere"))
    with pytest.raises(InvalidInputError, match="--upload-root"):
        BackendSettings(upload_root=str(tmp_path / "nowhere"))


def test_a_full_disk_is_a_503_and_the_next_webhook_works_once_space_is_free(backend_client, recorded, monkeypatch):
    client, _, _ = backend_client
    assert client.post("/setup", json=recorded("text_setup_post")).status_code == 200
    real_write = os.write

    def full(fd, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", full)
    error = _refused(client.post("/webhook", json=recorded("text_webhook_annotation_created")), 503, 504)
    assert "disk is full" in error
    monkeypatch.setattr(os, "write", real_write)
    r = client.post("/webhook", json=recorded("text_webhook_annotation_created"))
    assert r.status_code == 201 and r.json()["changed"] == 1

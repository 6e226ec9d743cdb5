"""Labeling-config parsing, local image references, the per-task feature cache, and image tasks
end to end with the recorded bodies of an image project."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from bayesal.exceptions import DataFileError, InvalidInputError
from bayesal.labelstudio.config import parse_label_config
from bayesal.labelstudio.features import FeatureStore, TaskFeaturizer


class _CountingBackbone:
    """A deterministic, content-dependent encoder (bytes of each item's SHA-256) that counts its calls."""

    name = "counting"
    dim = 8

    def __init__(self):
        self.calls = 0

    def config(self):
        return {"name": self.name, "dim": self.dim}

    def encode(self, items, batch_size=64, progress=True):
        self.calls += 1
        digests = [hashlib.sha256(str(t).encode()).digest()[: self.dim] for t in items]
        return np.array([np.frombuffer(d, dtype=np.uint8) for d in digests], dtype=np.float32) / 255.0


def test_parse_text_and_image_configs():
    cfg = parse_label_config(
        '<View><Header value="Pick"/><Text name="body" value="$review"/>'
        '<Choices name="sentiment" toName="body" choice="single-radio">'
        '<Choice value="Positive" alias="pos"/><Choice value="Negative"/></Choices></View>'
    )
    assert (cfg.from_name, cfg.to_name, cfg.kind, cfg.data_key) == ("sentiment", "body", "text", "review")
    assert cfg.classes == ("Positive", "Negative")
    assert cfg.class_index("pos") == 0 and cfg.class_index("Negative") == 1 and cfg.class_index("x") is None
    img = parse_label_config('<View><Image name="img" value="$image"/><Choices name="c" toName="img">'
                             '<Choice value="a"/><Choice value="b"/><Choice value="c"/></Choices></View>')
    assert img.kind == "image" and img.data_key == "image" and len(img.classes) == 3
    from bayesal.labelstudio.config import ChoicesConfig

    assert ChoicesConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("xml, fragment", [
    ("", "empty"),
    ("<View><Text", "well-formed"),
    ('<View><Text name="t" value="$t"/><Choices name="c" toName="t"><Choice value="a"/></Choices></View>', "at least 2"),
    ('<View><Text name="t" value="$t"/><Choices name="c" toName="t"><Choice value="a"/><Choice value="a"/></Choices></View>', "repeats"),
    ('<View><Text name="t" value="hello"/><Choices name="c" toName="t"><Choice value="a"/><Choice value="b"/></Choices></View>', "$key"),
    ('<View><Text name="t" value="$t" valueType="url"/><Choices name="c" toName="t"><Choice value="a"/><Choice value="b"/></Choices></View>', "downloaded"),
    ('<View><Audio name="a" value="$a"/><Choices name="c" toName="a"><Choice value="a"/><Choice value="b"/></Choices></View>', "no <Choices>"),
])
def test_unsupported_configs_say_why(xml, fragment):
    with pytest.raises(InvalidInputError, match="not supported") as err:
        parse_label_config(xml)
    assert fragment in str(err.value)


def _image_featurizer(tmp_path, **kw):
    cfg = parse_label_config('<View><Image name="i" value="$image"/><Choices name="c" toName="i">'
                             '<Choice value="a"/><Choice value="b"/></Choices></View>')
    return TaskFeaturizer(cfg, _CountingBackbone(), **kw)


def test_image_references_resolve_only_inside_their_roots(tmp_path):
    files, uploads = tmp_path / "files", tmp_path / "media" / "upload"
    (files / "sub").mkdir(parents=True)
    (uploads / "3").mkdir(parents=True)
    f = _image_featurizer(tmp_path, files_root=files, upload_root=uploads)
    assert f.image_path("/data/local-files/?d=sub/a%20b.png") == (files / "sub" / "a b.png").resolve()
    assert f.image_path("/data/upload/3/x.png") == (uploads / "3" / "x.png").resolve()
    assert f.image_path(str(files / "sub" / "c.png")) == (files / "sub" / "c.png").resolve()
    assert f.image_path("file://" + str(files / "d.png")) == (files / "d.png").resolve()
    for bad in ("/data/local-files/?d=../../etc/passwd", "/data/upload/../../secret", "/etc/passwd"):
        with pytest.raises(DataFileError, match="outside"):
            f.image_path(bad)
    (files / "link").symlink_to(tmp_path)
    with pytest.raises(DataFileError, match="outside"):
        f.image_path("/data/local-files/?d=link/x.png")
    for remote in ("https://example.com/a.png", "s3://bucket/a.png", "relative/a.png"):
        with pytest.raises(DataFileError, match="never downloads"):
            f.image_path(remote)
    with pytest.raises(DataFileError, match="--upload-root"):
        _image_featurizer(tmp_path, files_root=files).image_path("/data/upload/3/x.png")


def test_feature_store_caches_per_task_and_survives_a_torn_write(tmp_path):
    cfg = parse_label_config('<View><Text name="t" value="$text"/><Choices name="c" toName="t">'
                             '<Choice value="a"/><Choice value="b"/></Choices></View>')
    bb = _CountingBackbone()
    path = tmp_path / "features.bin"
    f = TaskFeaturizer(cfg, bb, store=FeatureStore(path, bb.dim, bb.config()))
    tasks = [{"id": i, "data": {"text": f"text {i}"}} for i in range(5)]
    x = f.encode(tasks)
    assert x.shape == (5, 8) and bb.calls == 1
    np.testing.assert_array_equal(f.encode(tasks[::-1]), x[::-1])
    assert bb.calls == 1  # all from the cache
    # a task edited in Label Studio (same id, new text) is encoded again
    f.encode([{"id": 0, "data": {"text": "edited"}}])
    assert bb.calls == 2
    # a crash mid-append leaves a torn record: it is ignored and cut off
    with open(path, "ab") as fh:
        fh.write(b"\x01" * 10)
    store = FeatureStore(path, bb.dim, bb.config())
    assert len(store) == 6
    f2 = TaskFeaturizer(cfg, bb, store=store)
    np.testing.assert_array_equal(f2.encode(tasks), x)
    assert bb.calls == 2
    # another backbone: the old file is set aside, not mixed in
    other = FeatureStore(path, 4, {"name": "other"})
    assert len(other) == 0 and path.with_name("features.bin.stale").exists()


def test_tasks_without_the_data_key_are_refused(tmp_path):
    cfg = parse_label_config('<View><Text name="t" value="$text"/><Choices name="c" toName="t">'
                             '<Choice value="a"/><Choice value="b"/></Choices></View>')
    f = TaskFeaturizer(cfg, _CountingBackbone())
    with pytest.raises(InvalidInputError, match=r"data\['text'\]"):
        f.encode([{"id": 1, "data": {"body": "x"}}])
    with pytest.raises(InvalidInputError, match="must be a string"):
        f.encode([{"id": 1, "data": {"text": 3}}])


@pytest.mark.slow
def test_image_project_end_to_end_with_recorded_bodies(tmp_path, recorded):
    """Real EfficientNet-Lite0 features of local image files referenced the way Label Studio does."""
    pytest.importorskip("fastapi")
    pytest.importorskip("efficientnet_lite_pytorch", reason="the image extras are not installed")
    from fastapi.testclient import TestClient
    from PIL import Image

    from bayesal.labelstudio import BackendSettings, LabelStudioBackend, create_app

    files = tmp_path / "files"
    files.mkdir()
    for i, v in enumerate((30, 220)):  # what the recording used: a dark and a light image
        Image.fromarray(np.full((24, 32, 3), v, dtype=np.uint8)).save(files / f"img{i}.png")
    backend = LabelStudioBackend(tmp_path / "state", BackendSettings(seed=0, fsync=False, files_root=str(files)))
    with TestClient(create_app(backend)) as client:
        assert client.post("/setup", json=recorded("image_setup_post")).status_code == 200
        pbody = recorded("image_predict_post")
        assert [t["data"]["image"] for t in pbody["tasks"]] == ["/data/local-files/?d=img0.png", "/data/local-files/?d=img1.png"]
        before = client.post("/predict", json=pbody).json()
        np.testing.assert_allclose([r["score"] for r in before["results"]], 1.0, atol=1e-6)
        created = recorded("image_webhook_annotation_created")
        assert created["annotation"]["result"][0]["value"]["choices"] == ["dark"]
        assert client.post("/webhook", json=created).json()["changed"] == 1
        after = client.post("/predict", json=pbody).json()
        assert after["model_version"] != before["model_version"]
        assert [r["result"][0]["value"]["choices"][0] for r in after["results"]][0] == "dark"
        assert all(r["result"][0]["from_name"] == "shape" and r["result"][0]["to_name"] == "image" for r in after["results"])
        bad = recorded("image_predict_post")
        bad["tasks"][0]["data"]["image"] = "/data/local-files/?d=../../../etc/passwd"
        r = client.post("/predict", json=bad)
        assert r.status_code == 400 and "outside" in r.json()["error"]

"""Image thumbnails: made once, kept as files, served under content-keyed addresses with long caching."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from bayesal.data import ImageFiles, RawItems, Thumbnails, thumbnail_png  # noqa: E402
from bayesal.labeling.session import Session  # noqa: E402
from bayesal.serve import LabelingService, create_app  # noqa: E402
from bayesal.serve.app import TOKEN_HEADER  # noqa: E402

NAMES = ["a", "b", "c"]
LOCAL = "http://127.0.0.1:8765"


def _pool(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    images = (rng.integers(0, 60, size=(n, 12, 12)) + 60 * y[:, None, None]).astype(np.uint8)
    x = images.reshape(n, -1).astype(np.float32) / 255.0
    return x, y, images


def _service(tmp_path: Path, items, **kw) -> LabelingService:
    x, _, _ = _pool()
    session = Session(x, NAMES, items=items, random_state=1, candidate_size=50, state_dir=tmp_path / "s", fsync=False,
                      background=False)
    return LabelingService(session, name="imgs", **kw)


def _client(svc: LabelingService, token: str | None = None, **headers) -> TestClient:
    h = {TOKEN_HEADER: token or "-", "X-Bayesal-Client": "tab1", **headers}
    return TestClient(create_app(svc, token=token), base_url=LOCAL, headers=h)


def test_an_image_item_is_shown_from_a_cached_thumbnail_file(tmp_path):
    _, _, images = _pool()
    svc = _service(tmp_path, images)
    try:
        c = _client(svc)
        card = c.get("/api/next").json()
        src = card["item"]["src"]
        assert card["item"]["kind"] == "image" and re.fullmatch(r"thumbs/px-[0-9a-f]{16}/\d+\.png", src)
        assert int(src.rsplit("/", 1)[1][:-4]) == card["index"]
        r = c.get("/" + src)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert r.content == thumbnail_png(images[card["index"]])  # the pixels shown before, now a file
        assert "max-age=31536000" in r.headers["cache-control"] and "immutable" in r.headers["cache-control"]
        etag = r.headers["etag"]
        # made once, then read from its file in the session folder (a restart reads it too)
        files = list((tmp_path / "s" / "thumbs").rglob("*.png"))
        assert [f.name for f in files] == [f"{card['index']}.png"] and files[0].read_bytes() == r.content
        again = c.get("/" + src, headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
        assert c.get("/" + src, headers={"If-None-Match": '"other"'}).status_code == 200
        # the page's policy lets it load them; the API itself is still never cached
        assert "img-src 'self' data:" in c.get("/").headers["content-security-policy"]
        assert c.get("/api/next").headers["cache-control"] == "no-store"
    finally:
        svc.close()


def test_a_missing_thumbnail_is_made_on_first_use_and_kept(tmp_path):
    _, _, images = _pool()
    svc = _service(tmp_path, images)
    try:
        c = _client(svc)
        key = svc.thumbnails.key
        path = svc.thumbnails.file(7)
        assert path is not None and not path.exists()  # e.g. a session made before thumbnails were kept
        first = c.get(f"/thumbs/{key}/7.png")
        assert first.status_code == 200 and path.read_bytes() == first.content
        path.write_bytes(b"kept")  # the file is read from now on, not made again
        assert c.get(f"/thumbs/{key}/7.png").content == b"kept"
    finally:
        svc.close()


@pytest.mark.parametrize("address", ["/thumbs/px-0000000000000000/1.png", "/thumbs/{key}/120.png",
                                     "/thumbs/{key}/1.jpg", "/thumbs/{key}/-1.png", "/thumbs/{key}/..png",
                                     "/thumbs/{key}/x.png"])
def test_unknown_thumbnails_are_404(tmp_path, address):
    _, _, images = _pool()
    svc = _service(tmp_path, images)
    try:
        r = _client(svc).get(address.format(key=svc.thumbnails.key))
        assert r.status_code == 404 and r.headers["cache-control"] == "no-store"
        assert not (tmp_path / "s" / "thumbs").exists()  # nothing was made
    finally:
        svc.close()


def test_a_text_session_has_no_thumbnails(tmp_path):
    texts = [f"text {i}" for i in range(120)]
    svc = _service(tmp_path, texts)
    try:
        c = _client(svc)
        assert c.get("/api/next").json()["item"]["kind"] == "text"
        r = c.get("/thumbs/px-0000000000000000/0.png")
        assert r.status_code == 404 and "not images" in r.json()["detail"]
        assert c.get("/api/upcoming").json() == {"thumbnails": []}
    finally:
        svc.close()


def test_thumbnails_need_the_token_as_the_page_does(tmp_path):
    _, _, images = _pool()
    svc = _service(tmp_path, images)
    try:
        app = create_app(svc, token="s3cret-token")
        bare = TestClient(app, base_url=LOCAL)  # an <img> sends no header
        src = "/" + svc.thumbnail_url(3)
        assert bare.get(src).status_code == 401
        assert bare.get(src + "?token=wrong-token").status_code == 401
        assert bare.get(src + "?token=s3cret-token").status_code == 200
        assert bare.get("/api/next?token=s3cret-token").status_code == 401  # only the page and images
        # without a token configured an <img> of the page loads it (loopback host only)
        assert TestClient(create_app(svc), base_url=LOCAL).get(src).status_code == 200
        assert TestClient(create_app(svc), base_url="http://evil.example").get(src).status_code == 403
    finally:
        svc.close()


def test_the_thumbnails_of_the_next_items_are_offered_for_prefetch(tmp_path):
    x, y, images = _pool()
    svc = _service(tmp_path, images)
    try:
        c = _client(svc)
        for _ in range(4):  # past the cold start
            card = c.get("/api/next").json()
            c.post("/api/answer", json={"index": card["index"], "label": NAMES[int(y[card["index"]])]})
        assert svc.speculator is not None and svc.speculator.wait(timeout=60)
        ahead = c.get("/api/upcoming").json()["thumbnails"]
        assert 1 <= len(ahead) <= 2 and all(re.fullmatch(r"thumbs/px-[0-9a-f]{16}/\d+\.png", s) for s in ahead)
        shown = c.get("/api/next").json()["index"]
        nxt = c.post("/api/answer", json={"index": shown, "label": NAMES[int(y[shown])]}).json()["next"]
        assert nxt["item"]["src"] in ahead or len(ahead) < 2  # the likeliest answers' next items
    finally:
        svc.close()


def test_image_folder_thumbnails_are_made_with_the_features_and_shared_by_subsets(tmp_path):
    from PIL import Image

    root = tmp_path / "photos"
    root.mkdir()
    _, _, images = _pool(n=6)
    paths = []
    for k in range(6):
        p = root / f"{k}.png"
        Image.fromarray(images[k]).save(p)
        paths.append(p)
    raw = RawItems("image", root, [p.name for p in paths], paths=paths, labels=[None] * 6)
    raw.thumbnails = tmp_path / "emb" / "thumbs-0123456789abcdef"
    made = ImageFiles(paths, thumbnails=raw.thumbnails).thumbnail_store().make_all()
    assert made == 6 and len(list(raw.thumbnails.glob("*.png"))) == 6
    subset = raw.display_items([4, 1])
    store = subset.thumbnail_store()
    assert isinstance(store, Thumbnails) and store.key == "thumbs-0123456789abcdef"
    assert store.png(0) == thumbnail_png(np.asarray(Image.open(paths[4]).convert("RGB")))
    assert store.make_all() == 0  # the folder's thumbnails serve the subset: nothing made again

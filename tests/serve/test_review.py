"""The Review view of the web app: the API over the leave-one-out doubt, and the page in a real browser."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from bayesal.labeling.session import Session  # noqa: E402
from bayesal.serve import LabelingService, create_app  # noqa: E402
from bayesal.serve.app import TOKEN_HEADER  # noqa: E402

from .waiting import wait_until  # noqa: E402

NAMES = ["business", "sport", "tech"]


@pytest.fixture
def service(clustered_pool, tmp_path):
    """50 labels, 5 of them wrong (moved to the next class)."""
    x, y, _, _ = clustered_pool(n=150, seed=5)
    texts = [f"document {i}" for i in range(len(y))]
    session = Session(x, NAMES, items=texts, random_state=1, background=False, state_dir=tmp_path / "s", fsync=False)
    wrong = set(range(3, 50, 10))
    for i in range(50):
        session.tell(i, int((y[i] + 1) % 3) if i in wrong else int(y[i]))
    svc = LabelingService(session, name="toy")
    svc.truth, svc.wrong = y, wrong
    yield svc
    svc.close()


def client_for(svc):
    return TestClient(create_app(svc), base_url="http://127.0.0.1:8765", headers={TOKEN_HEADER: "-"})


def test_review_keep_and_correct(service):
    c = client_for(service)
    card = c.get("/api/review/next").json()
    assert not card["done"] and card["index"] in service.wrong
    assert card["label"] == NAMES[service.session.labels[card["index"]]]
    assert card["item"]["text"] == f"document {card['index']}"
    assert card["doubt"] == pytest.approx(service.session.label_doubt()[card["index"]], abs=1e-4) and card["doubt"] > 0.5
    assert card["guess"] == [card["top"][0]["label"]] and card["guess"][0] != card["label"]
    # keep: the next card is another item, and the kept one is not asked about again
    kept = card["index"]
    r = c.post("/api/review/keep", json={"index": kept}).json()
    assert r["kept"] == kept and r["next"]["index"] != kept and r["next"]["n_kept"] == 1
    # correct through the existing correct event: the label changes and the item leaves the queue
    nxt = r["next"]["index"]
    right = NAMES[int(service.truth[nxt])]
    assert c.post("/api/correct", json={"index": nxt, "label": right}).status_code == 200
    assert service.session.labels[nxt] == int(service.truth[nxt])
    assert service.session.history[-1]["op"] == "correct"
    after = c.get("/api/review/next").json()
    assert after["index"] not in (kept, nxt)
    # the queue ends once every label is kept
    for i in service.session.labels:
        c.post("/api/review/keep", json={"index": i})
    assert c.get("/api/review/next").json()["done"] is True


def test_review_input_checks(service):
    c = client_for(service)
    assert c.post("/api/review/keep", json={"index": 120}).status_code == 409  # not labeled
    assert c.post("/api/review/keep", json={"index": 10**6}).status_code == 422
    assert c.post("/api/review/keep", json={"index": 1, "label": "x"}).status_code == 422
    assert c.post("/api/review/keep", json={"index": "1"}).status_code == 422


# ------------------------------------------------------------------------------------ real browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"


@pytest.mark.slow
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="no Chromium (apt-get install chromium)")
def test_review_view_in_a_browser(serve_process, tmp_path):
    pytest.importorskip("uvicorn")
    sync_api = pytest.importorskip("playwright.sync_api")
    from bayesal.data import load_dataset

    truth = load_dataset("digits").train_labels
    srv = serve_process(["--dataset", "digits", "--state-dir", str(tmp_path / "proj")])
    pw = sync_api.sync_playwright().start()
    browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
    try:
        page = browser.new_context().new_page()
        page.set_default_timeout(30_000)
        page.goto(srv.page)
        page.wait_for_selector("body[data-ready='1'][data-review-ready='1']")
        wait_until(page, "window.bayesalRenders >= 1")
        given: dict[int, int] = {}
        for k in range(30):  # label by keyboard; every sixth answer is wrong
            i = int(page.get_attribute("#card", "data-index"))
            label = int(truth[i]) if k % 6 != 5 else (int(truth[i]) + 3) % 10
            given[i] = label
            n = page.evaluate("window.bayesalRenders")
            page.keyboard.press(str(label))
            wait_until(page, "n => window.bayesalRenders > n", n)

        def review_card() -> int:
            return int(page.get_attribute("#review-card", "data-index"))

        def wait_review(n: int) -> None:
            wait_until(page, "n => window.bayesalReviewRenders > n", n)

        page.click("#review-open")
        wait_review(0)
        assert page.is_hidden("#labeling") and page.is_visible("#review")
        first = review_card()
        assert page.text_content("#review-given") == str(given[first])
        # a class key corrects it (the correct event), and the next doubted label is shown
        fixed = int(truth[first]) if given[first] != truth[first] else (given[first] + 1) % 10
        n = page.evaluate("window.bayesalReviewRenders")
        page.keyboard.press(str(fixed))
        wait_review(n)
        assert page.text_content("#review-message") == f"corrected #{first} → {fixed}"
        second = review_card()
        assert second != first
        # Enter keeps the label: the card moves on and the kept one is not shown again
        n = page.evaluate("window.bayesalReviewRenders")
        page.keyboard.press("Enter")
        wait_review(n)
        assert page.text_content("#review-message").startswith(f"kept #{second}")
        assert review_card() not in (first, second)
        # Escape goes back to labeling, whose keys answer again
        page.keyboard.press("Escape")
        assert page.is_visible("#labeling") and page.is_hidden("#review")
        i = int(page.get_attribute("#card", "data-index"))
        n = page.evaluate("window.bayesalRenders")
        page.keyboard.press(str(truth[i]))
        wait_until(page, "n => window.bayesalRenders > n", n)
        # the correction is in the label log: a fresh session reads it back
        page.close()
    finally:
        browser.close()
        pw.stop()
    srv.stop()
    x = load_dataset("digits").train_features
    session = Session.resume(tmp_path / "proj", x)
    try:
        assert session.labels[first] == fixed and session.n_labeled == 31
        assert session.history[30]["op"] == "correct"
    finally:
        session.close()

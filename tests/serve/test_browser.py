"""``bayesal serve`` in a real browser (headless Chromium driven by Playwright).

Labels by keyboard, undo, correct, reload, SIGKILL + restart, two tabs on one item, a wrong token.
Skipped, with the reason shown, where no Chromium is installed (CI installs Debian's package).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api")

from bayesal.data import load_dataset  # noqa: E402
from bayesal.labeling.session import Session  # noqa: E402

from .waiting import wait_until  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason="no Chromium (apt-get install chromium); .ci/run installs it so CI runs these tests"),
]
WAIT_MS = 30_000


@pytest.fixture(scope="module")
def browser():
    pw = sync_api.sync_playwright().start()
    b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
    yield b
    b.close()
    pw.stop()


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def open_page(browser, url: str):
    page = browser.new_context().new_page()
    page.set_default_timeout(WAIT_MS)
    page.goto(url)
    wait_ready(page)
    return page


def wait_ready(page) -> None:
    page.wait_for_selector("body[data-ready='1']")
    wait_until(page, "window.bayesalRenders >= 1")  # the first item is on screen


def shown_index(page) -> int:
    return int(page.get_attribute("#card", "data-index"))


def press_and_wait(page, key: str) -> None:
    """Press ``key`` and wait until the next item has been rendered (the page counts each one)."""
    n = page.evaluate("window.bayesalRenders")
    page.keyboard.press(key)
    wait_until(page, "n => window.bayesalRenders > n", n)


def wait_panel(page, n_labels: int) -> None:
    page.wait_for_selector(f"#panel[data-labels='{n_labels}']")


def test_keyboard_labeling_undo_correct_reload_and_sigkill(browser, digits, serve_process, tmp_path):
    state = tmp_path / "proj"
    srv = serve_process(["--dataset", "digits", "--state-dir", str(state)])
    page = open_page(browser, srv.page)
    acked: dict[int, int] = {}
    truth = digits.train_labels

    def label_one() -> int:
        i = shown_index(page)
        press_and_wait(page, str(truth[i]))  # digit classes: the key is the digit itself
        assert page.text_content("#message") == f"#{i} → {truth[i]}"
        acked[i] = int(truth[i])
        return i

    for _ in range(15):
        label_one()
    wait_panel(page, 15)

    # undo by keyboard: the last answer is taken back and its item is shown again
    last = list(acked)[-1]
    press_and_wait(page, "u")
    assert shown_index(page) == last and page.text_content("#message").startswith(f"undone: tell #{last}")
    del acked[last]
    wait_panel(page, 14)
    label_one()

    # reload mid-way: the session goes on where it was
    page.reload()
    wait_ready(page)
    wait_panel(page, 15)
    for _ in range(15):
        label_one()
    wait_panel(page, 30)
    assert page.locator("#counts tr").count() == 10
    assert page.locator("#plots svg").count() == 3 and page.locator("#plots polyline").count() >= 2

    # correct a past label in the history list
    target = list(acked)[-3]
    new = (acked[target] + 1) % 10
    shown_before = page.evaluate("window.bayesalRenders")
    page.select_option(f"#recent li[data-index='{target}'] select", str(new))
    wait_until(page, "t => document.getElementById('message').textContent.startsWith(t)", f"corrected #{target} → {new}")
    # the correction's answer puts the next item on screen too (counted a frame later): wait for it, or the
    # next key's wait could end on that render instead of its own
    wait_until(page, "n => window.bayesalRenders > n", shown_before)
    acked[target] = new
    label_one()  # the keyboard labels again right after the menu was used
    assert len(acked) == 31

    # crash: every acknowledged label must be on disk
    srv.kill()
    again = serve_process(["--resume", str(state)])
    page2 = open_page(browser, again.page)
    wait_panel(page2, 31)
    assert shown_index(page2) not in acked
    again.stop()
    s = Session.resume(state, digits.train_features)
    try:
        assert s.labels == acked
    finally:
        s.close()


def test_two_tabs_answer_the_same_item(browser, digits, serve_process, tmp_path):
    srv = serve_process(["--dataset", "digits", "--state-dir", str(tmp_path / "p"), "--lease-seconds", "0"])
    tab_a, tab_b = open_page(browser, srv.page), open_page(browser, srv.page)
    item = shown_index(tab_a)
    assert shown_index(tab_b) == item  # without leases both are shown the top pick
    right = str(digits.train_labels[item])
    wrong = str((digits.train_labels[item] + 1) % 10)
    press_and_wait(tab_a, right)
    press_and_wait(tab_b, wrong)
    msg = tab_b.text_content("#message")
    assert f"item #{item} was already labeled '{right}'" in msg and "not recorded" in msg
    assert tab_b.get_attribute("#message", "class") == "warn"
    assert shown_index(tab_b) != item  # the second tab moved on to the next item
    wait_panel(tab_b, 1)
    srv.stop()
    s = Session.resume(tmp_path / "p", digits.train_features)
    try:
        assert s.labels == {item: int(right)}
    finally:
        s.close()


def test_wrong_token_is_refused(browser, serve_process, tmp_path):
    srv = serve_process(["--dataset", "digits", "--state-dir", str(tmp_path / "t")], token="browser-test-token")
    page = browser.new_context().new_page()
    page.set_default_timeout(WAIT_MS)
    resp = page.goto(srv.url + "?token=wrong-token-here")
    assert resp.status == 401 and "wrong token" in page.content()
    resp = page.goto(srv.url)
    assert resp.status == 401
    good = open_page(browser, srv.page)
    assert "token=" not in good.url  # the page drops the secret from the address bar
    # a script with a wrong header (e.g. from another origin) is refused; the page's own header works
    status = good.evaluate("fetch('/api/info', {headers: {'X-Bayesal-Token': 'nope'}}).then(r => r.status)")
    assert status == 401
    assert good.evaluate("fetch('/api/info').then(r => r.status)") == 401
    press_and_wait(good, "s")  # the page itself keeps working (skip)
    assert good.text_content("#message").startswith("skipped #")
    # a mouse answer leaves no focused button behind that Space would press again
    n = good.evaluate("window.bayesalRenders")
    good.click("#classes button[data-label='5']")
    wait_until(good, "n => window.bayesalRenders > n", n)
    good.keyboard.press(" ")
    good.wait_for_timeout(500)
    assert good.evaluate("window.bayesalRenders") == n + 1
    # exports download through the page (its fetch carries the token header)
    first = good.text_content("#message").split(" ")[0].lstrip("#")
    i = shown_index(good)
    press_and_wait(good, "3")
    with good.expect_download() as dl:
        good.click("#export-csv")
    path = dl.value.path()
    assert dl.value.suggested_filename == "labels.csv"
    lines = Path(path).read_text().splitlines()
    assert lines[0] == "index,label,label_index,item,id,annotator,time,label_doubt"
    assert [ln.split(",")[:5] for ln in lines[1:]] == [[first, "5", "5", "", first], [str(i), "3", "3", "", str(i)]]
    assert all(ln.split(",")[5] and ln.split(",")[6].endswith("+00:00") for ln in lines[1:])  # the tab, the time
    assert all(0 <= float(ln.split(",")[7]) <= 1 for ln in lines[1:])  # the leave-one-out doubt


def highlighted(page) -> list[str]:
    return page.eval_on_selector_all("#classes button.top", "bs => bs.map(b => b.dataset.label)")


def test_no_class_is_highlighted_until_the_model_has_a_guess(browser, digits, serve_process, tmp_path):
    srv = serve_process(["--dataset", "digits", "--state-dir", str(tmp_path / "g"), "--retrain-every", "0"])
    page = open_page(browser, srv.page)
    truth = digits.train_labels

    def no_guess_shown() -> None:
        # every class is 1/10: no bars, no "top" button, a sentence instead
        assert page.get_attribute("#model", "data-guess") == "none"
        assert page.text_content("#no-guess") == "no guess yet (no labels yet)"
        assert page.locator("#model .prob").count() == 0
        assert highlighted(page) == [] and page.locator("#classes button[title]").count() == 0

    assert page.locator("#classes button").count() == 10
    no_guess_shown()

    # one label: the prediction is no longer uniform; the most probable class is highlighted, with any
    # class tied with it (a class shown less probable is not)
    press_and_wait(page, str(truth[shown_index(page)]))
    assert page.get_attribute("#model", "data-guess") in ("one", "tie") and page.locator("#no-guess").count() == 0
    probs = page.eval_on_selector_all("#model .prob", "ps => ps.map(p => [p.querySelector('b').textContent, "
                                                      "Number(p.lastChild.textContent.replace('%', ''))])")
    tops = highlighted(page)
    assert len(probs) == 3
    assert probs[0][0] in tops and 1 <= len(tops) < 10
    assert all(label not in tops for label, pct in probs if pct < probs[0][1] - 1)
    assert (len(tops) == 1) == (page.get_attribute("#model", "data-guess") == "one")
    title = "the model's guess" if len(tops) == 1 else "tied for the model's guess"
    assert page.get_attribute(f"#classes button[data-label='{probs[0][0]}']", "title") == title

    # undo the label: the model is back to knowing nothing, and says so
    press_and_wait(page, "u")
    wait_panel(page, 0)
    no_guess_shown()


def test_the_accuracy_estimate_is_named_and_explained(browser, digits, serve_process, tmp_path):
    srv = serve_process(["--dataset", "digits", "--state-dir", str(tmp_path / "e"), "--retrain-every", "0"])
    page = open_page(browser, srv.page)
    truth = digits.train_labels
    seen: set[int] = set()
    while len(seen) < 2:  # the signals start once two classes are labeled
        i = shown_index(page)
        press_and_wait(page, str(truth[i]))
        seen.add(int(truth[i]))
    page.wait_for_selector("#signal-accuracy")
    row = page.locator("#signal-accuracy")
    assert row.locator(".name").text_content().startswith("model's estimate of its accuracy on the pool")
    assert 0 < float(row.locator("b").text_content()) <= 1
    tip = row.locator(".tip")
    text = tip.get_attribute("data-tip")
    assert "not a measurement" in text and "no true label is used" in text and "1347 pool items (the whole pool)" in text
    assert tip.get_attribute("aria-label") == text
    shown = "el => getComputedStyle(el, '::after').content"
    assert tip.evaluate(shown) in ("none", "normal", "")  # hidden until asked for
    tip.hover()
    assert text in tip.evaluate(shown)  # the explanation is on screen while the mouse is over the mark
    assert page.locator("#signal-held-out .tip").get_attribute("data-tip").startswith("Accuracy of the model's")
    assert "model's estimate" in page.inner_html("#plots")  # the plot's legend names it the same way
    # the accuracy estimate with its interval: the model's own here (no audit stream), and said so
    est = page.locator("#signal-estimate")
    assert est.locator(".name").text_content().startswith("accuracy on the unlabeled pool (90% interval)")
    assert "[" in est.locator("b").text_content() and "not honest" in est.locator(".tip").get_attribute("data-tip")
    assert page.locator("#signal-expected-gain b").text_content() == "n/a until 50 labels"

"""Screenshots of ``bayesal serve`` for the README, taken by headless Chromium (Playwright).

    python docs/make_screenshots.py            # writes docs/serve-text.png, docs/serve-images.png, docs/serve-stale.png

Starts real servers on 127.0.0.1 (bbcnews and digits, fresh sessions in a temporary directory), gives
some answers through the page and the API (the dataset's true labels, as a person would), then
photographs the page, with the servers' default settings. A script answers faster than a background
refit (the doubling schedule's, at 10, 20, 40, … labels) lands, a person does not: after each answer
the script waits until the session has swapped in any pending refit (while a person would be reading
the next item), so the picks after it, and the pictures, come from the model the defaults reach, and a
retake shows the same figures. Prints the panel's figures each screenshot shows, for the text of
docs/labeling.md that quotes them.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

from bayesal.data import load_dataset
from bayesal.exceptions import CorruptStateError
from bayesal.labeling.storage import load_snapshot
from bayesal.labeling.store import SESSION_FILES

DOCS = Path(__file__).resolve().parent
SRC = str(DOCS.parent / "src")
CHROMIUM = "/usr/bin/chromium"
H = {"X-Bayesal-Token": "-", "X-Bayesal-Client": "script"}


def start(args: list[str], log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "bayesal", "serve", *args, "--port", str(port)],
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env)  # noqa: SIM115
    url = f"http://127.0.0.1:{port}/"
    for _ in range(600):
        try:
            if httpx.get(url + "api/info", headers=H, timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(log.read_text())


def answer_via_api(url: str, state_dir: Path, truth, names: list[str], n: int) -> None:
    card = httpx.get(url + "api/next", headers=H).json()
    for k in range(1, n + 1):
        r = httpx.post(url + "api/answer", headers=H, json={"index": card["index"], "label": names[truth[card["index"]]]})
        card = r.json()["next"]  # at a refit point: picked under the interim posterior, as a person sees it
        httpx.get(url + "api/panel", headers=H)  # as the page does after each answer: one point per label count
        wait_refit(state_dir, k)  # the refit lands while a person reads the next item


def wait_refit(state_dir: Path, n_labels: int, timeout: float = 600.0) -> None:
    """Wait until the server's session holds no pending refit at ``n_labels`` labels.

    The session writes no snapshot while a refit is pending, so a snapshot that holds all ``n_labels``
    labels means every refit point before them has been swapped in (the API does not expose it).
    """
    path = state_dir / SESSION_FILES.snapshot
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if len(load_snapshot(path)["labels"]) == n_labels:
                return
        except (FileNotFoundError, CorruptStateError):  # not written yet, or caught mid-replace
            pass
        time.sleep(0.05)
    raise RuntimeError(f"the refit pending at {n_labels} labels did not land within {timeout:.0f} s")


def open_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1280, "height": 860}, device_scale_factor=1)
    page.goto(url)
    page.wait_for_selector("body[data-ready='1']")
    page.wait_for_function("window.bayesalRenders >= 1")
    return page


def press(page, key: str) -> None:
    n = page.evaluate("window.bayesalRenders")
    page.keyboard.press(key)
    page.wait_for_function("n => window.bayesalRenders > n", arg=n)


def shown_numbers(page) -> str:
    """The panel's figures and the highlighted classes as the screenshot shows them (for the docs' text)."""
    rows = page.eval_on_selector_all("#signals > div", "ds => ds.map(d => [d.querySelector('.name').textContent, "
                                                         "d.querySelector('b').textContent])")
    tops = page.eval_on_selector_all("#classes button.top", "bs => bs.map(b => b.dataset.label)")
    model = " ".join(page.inner_text("#model").split())
    return "; ".join(f"{name.rstrip('?').strip()}: {value}" for name, value in rows) + f"; {model}; highlighted: {tops}"


def main() -> None:
    shown: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        tmp = Path(tmp)
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])

        bbc = load_dataset("bbcnews")
        proc, url = start(["--dataset", "bbcnews", "--state-dir", str(tmp / "bbc")], tmp / "bbc.log")
        try:
            answer_via_api(url, tmp / "bbc", bbc.train_labels, bbc.class_names, 40)
            page = open_page(browser, url)
            keys = {c["label"]: c["key"] for c in httpx.get(url + "api/info", headers=H).json()["classes"]}
            for _ in range(2):
                i = int(page.get_attribute("#card", "data-index"))
                press(page, keys[bbc.class_names[bbc.train_labels[i]]])
            page.wait_for_selector("#panel[data-labels='42']")
            wait_refit(tmp / "bbc", 42)
            page.screenshot(path=str(DOCS / "serve-text.png"), full_page=True)
            shown["serve-text.png"] = shown_numbers(page)
        finally:
            proc.terminate()
            proc.wait(timeout=30)

        digits = load_dataset("digits")
        proc, url = start(["--dataset", "digits", "--state-dir", str(tmp / "dig"), "--lease-seconds", "0"],
                          tmp / "dig.log")
        try:
            answer_via_api(url, tmp / "dig", digits.train_labels, digits.class_names, 60)
            page = open_page(browser, url)
            i = int(page.get_attribute("#card", "data-index"))
            press(page, str(digits.train_labels[i]))
            page.wait_for_selector("#panel[data-labels='61']")
            page.screenshot(path=str(DOCS / "serve-images.png"), full_page=True)
            shown["serve-images.png"] = shown_numbers(page)
            # two tabs on one item: the second answer is refused with a message
            other = open_page(browser, url)
            first = open_page(browser, url)
            i = int(first.get_attribute("#card", "data-index"))
            press(first, str(digits.train_labels[i]))
            press(other, str((digits.train_labels[i] + 3) % 10))
            other.wait_for_selector("#panel[data-labels='62']")
            other.screenshot(path=str(DOCS / "serve-stale.png"), clip={"x": 0, "y": 0, "width": 1280, "height": 560})
            shown["serve-stale.png"] = shown_numbers(other)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        browser.close()
    for name in ("serve-text.png", "serve-images.png", "serve-stale.png"):
        print(f"wrote {DOCS / name} ({(DOCS / name).stat().st_size // 1024} KiB): {shown[name]}")


if __name__ == "__main__":
    main()

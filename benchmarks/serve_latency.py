"""End-to-end latency and robustness of ``bayesal serve``: a 20,000 × 384, 10-class text pool, a
1,000,000-item pool queried whole, and an image pool.

A real server process (``python -m bayesal serve`` on 127.0.0.1, default settings: margin strategy
over ``--candidate-size`` random candidates (1,000; 0 = the whole pool, an exact query), fsync-ed label
log, no automatic retraining, the next item speculated under each likely answer while one is shown)
on a synthetic pool saved as a features file, then two phases:

1. **Browser** — headless Chromium (Playwright, ``/usr/bin/chromium``) labels ``--browser-answers``
   items by keyboard. The page records, for each answer, the time from the key press to the next
   item painted (``requestAnimationFrame`` after the DOM update; an image once its thumbnail file is
   loaded and decoded): HTTP round trip + Bayesian update + durable log line + the strategy's next pick
   + rendering. Like a person, the script presses the next
   key after the live panel has refreshed and after ``--read-ms`` of reading (a person needs far
   longer than that to read an item; the server speculates meanwhile).
2. **Stress** — 4 concurrent HTTP clients (threads, each its own client id) answer as fast as they
   can until ``--stress-answers`` answers are acknowledged in total. Stale answers (an item that
   another client labeled first) are counted, not retried. The server is then killed with SIGKILL
   and the session is reopened from disk: ``lost`` = acknowledged answers (both phases) whose label
   is not in the log. The server must stay up throughout.

Then, each with a server of its own and the browser phase only: a ``--big-pool``-item pool (default
1,000,000 rows × ``--d``, 1.5 GB of float32; 0 skips it) with ``--big-candidate-size`` (default 0: every
query scores the whole pool, from the session's pool moments), and an ``--image-pool``-item pool of
28 × 28 images (default 2,000; 0 skips it; given as pixel arrays in the features file, shown from
thumbnail files made on first use).

The machine is shared (2 cores, other jobs running): absolute times are noisy. Last line::

    serve_p50_ms=<text pool median> serve_p99_ms=<text pool p99> serve_1m_p50_ms=<big pool median>
    serve_img_p50_ms=<image pool median> lost=<labels lost>

    python benchmarks/serve_latency.py [--pool 20000] [--d 384] [--c 10] [--candidate-size 1000]
        [--browser-answers 200] [--stress-answers 1000] [--big-pool 1000000] [--image-pool 2000]
    python benchmarks/serve_latency.py --pool 1000000 --candidate-size 0 --big-pool 0 --image-pool 0
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bayesal.data.base import Dataset
from bayesal.labeling.session import Session

CHROMIUM = "/usr/bin/chromium"
SRC = str(Path(__file__).resolve().parents[1] / "src")



def poll_until(page, js: str, arg=None, timeout_s: float = 60.0) -> None:
    """Evaluate ``js`` in ``page`` until it is truthy: Playwright's ``wait_for_function`` polls with
    ``eval`` in the page, which the app's Content-Security-Policy refuses once a first check fails."""
    deadline = time.monotonic() + timeout_s
    while not (page.evaluate(js) if arg is None else page.evaluate(js, arg)):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {js!r}")
        page.wait_for_timeout(5)

def make_pool(n: int, d: int, c: int, n_test: int, seed: int = 0) -> Dataset:
    """Clustered Gaussian features (like normalised sentence embeddings) with short text items."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(c, d)) / np.sqrt(d) * 3
    y = rng.integers(0, c, size=n + n_test)
    x = (centers[y] + rng.normal(size=(n + n_test, d)) / np.sqrt(d)).astype(np.float32)
    names = [f"topic{k}" for k in range(c)]
    items = [f"synthetic document {i}: a few words standing in for a real text" for i in range(n)]
    return Dataset("pool20k", x[:n], y[:n], x[n:], y[n:], names, train_items=items,
                   test_items=[f"test {i}" for i in range(n_test)]).validate()


def make_image_pool(n: int, c: int, n_test: int, side: int = 28, seed: int = 0) -> Dataset:
    """Images ``(n, side, side)`` uint8 of ``c`` blurred class templates plus noise; the features are
    their flattened pixels projected to 64 dimensions (stand-ins for a backbone's embeddings)."""
    rng = np.random.default_rng(seed)
    templates = rng.uniform(0, 255, size=(c, side, side))
    y = rng.integers(0, c, size=n + n_test)
    imgs = np.clip(templates[y] * 0.7 + rng.normal(0, 40, size=(n + n_test, side, side)), 0, 255).astype(np.uint8)
    proj = rng.normal(size=(side * side, 64)) / side
    x = ((imgs.reshape(len(y), -1) / 255.0) @ proj).astype(np.float32)
    names = [f"shape{k}" for k in range(c)]
    return Dataset("images", x[:n], y[:n], x[n:], y[n:], names, train_items=imgs[:n], test_items=imgs[n:]).validate()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(data: Path, state: Path, log: Path, extra: list[str] | None = None) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "bayesal", "serve", "--dataset", str(data), "--state-dir", str(state),
           "--host", "127.0.0.1", "--port", str(port), *(extra or [])]
    proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env)  # noqa: SIM115
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {log.read_text()}")
        try:
            if httpx.get(url + "api/info", headers={"X-Bayesal-Token": "-"}, timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError("the server did not start within 900 s")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def browser_phase(url: str, truth: np.ndarray, names: list[str], answers: int,
                  read_ms: float = 0.0) -> tuple[list[float], dict[int, int]]:
    from playwright.sync_api import sync_playwright

    acked: dict[int, int] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_context().new_page()
        page.set_default_timeout(60_000)
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']")
        poll_until(page, "window.bayesalRenders >= 1")
        keys = {c["label"]: c["key"] for c in page.evaluate("fetch('/api/info', {headers: {'X-Bayesal-Token': '-'}})"
                                                             ".then(r => r.json())")["classes"]}
        for k in range(answers):
            i = int(page.get_attribute("#card", "data-index"))
            label = names[int(truth[i])]
            page.keyboard.press(keys[label])
            poll_until(page, "n => window.bayesalTimings.length > n", k)
            acked[i] = int(truth[i])
            page.wait_for_selector(f"#panel[data-labels='{k + 1}']")  # the panel caught up
            if read_ms > 0:
                time.sleep(read_ms / 1000)  # the person reads the item
        timings = page.evaluate("window.bayesalTimings")
        browser.close()
    return [float(t) for t in timings], acked


def stress_phase(url: str, truth: np.ndarray, names: list[str], total: int, clients: int = 4) -> dict:
    import httpx

    lock = threading.Lock()
    acked: dict[int, int] = {}
    stale = [0]
    errors: list[str] = []
    rtts: list[float] = []

    def worker(cid: str) -> None:
        h = {"X-Bayesal-Token": "-", "X-Bayesal-Client": cid}
        with httpx.Client(base_url=url, headers=h, timeout=60) as http:
            card = http.get("api/next").json()
            while True:
                with lock:
                    if len(acked) >= total or errors:
                        return
                if card.get("done"):
                    return
                i = card["index"]
                t0 = time.perf_counter()
                r = http.post("api/answer", json={"index": i, "label": names[int(truth[i])]})
                dt = time.perf_counter() - t0
                with lock:
                    if r.status_code == 200:
                        acked[i] = int(truth[i])
                        rtts.append(dt * 1000)
                    elif r.status_code == 409:
                        stale[0] += 1
                    else:
                        errors.append(f"{r.status_code} {r.text[:200]}")
                        return
                card = r.json()["next"]

    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(f"stress{k}",)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)
    return {"acked": acked, "stale": stale[0], "errors": errors, "rtts": rtts, "seconds": time.perf_counter() - t0,
            "hung": any(t.is_alive() for t in threads)}


def browser_only(ds: Dataset, tmp: Path, name: str, extra: list[str], answers: int, read_ms: float) -> list[float]:
    """A server of its own on ``ds`` and the browser phase; its answer → painted timings (ms)."""
    data, state, log = tmp / f"{name}.npz", tmp / f"{name}-proj", tmp / f"{name}.log"
    ds.save(data)
    t0 = time.perf_counter()
    proc, url = start_server(data, state, log, extra)
    print(f"{name}: pool {ds.train_features.shape[0]} x {ds.train_features.shape[1]}, {len(ds.class_names)} classes, "
          f"{' '.join(extra)}; server up in {time.perf_counter() - t0:.1f}s")
    try:
        timings, _ = browser_phase(url, ds.train_labels, ds.class_names, answers, read_ms)
    finally:
        proc.terminate()
        proc.wait(timeout=120)
    print(f"{name}: {len(timings)} answers, answer -> next item painted: p50 {pct(timings, 50):.1f} ms, "
          f"p90 {pct(timings, 90):.1f} ms, p99 {pct(timings, 99):.1f} ms, max {max(timings):.1f} ms")
    return timings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pool", "--n", dest="n", type=int, default=20_000, help="items of the text pool")
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--c", type=int, default=10)
    ap.add_argument("--candidate-size", type=int, default=1000, help="candidates per query (0: the whole pool)")
    ap.add_argument("--n-test", type=int, default=1000, help="held-out rows (the live panel's learning curve)")
    ap.add_argument("--browser-answers", type=int, default=200)
    ap.add_argument("--stress-answers", type=int, default=1000)
    ap.add_argument("--read-ms", type=float, default=300.0, help="reading time between an item painted and its key")
    ap.add_argument("--big-pool", type=int, default=1_000_000, help="items of the whole-pool phase (0 skips it)")
    ap.add_argument("--big-candidate-size", type=int, default=0)
    ap.add_argument("--big-answers", type=int, default=50)
    ap.add_argument("--image-pool", type=int, default=2000, help="items of the image phase (0 skips it)")
    ap.add_argument("--image-answers", type=int, default=100)
    ap.add_argument("--no-speculate", action="store_true", help="serve without the speculative next item")
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        sys.exit(f"{CHROMIUM} not found: apt-get install chromium")
    common = ["--no-speculate"] if args.no_speculate else []

    ds = make_pool(args.n, args.d, args.c, args.n_test)
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        data, state, log = Path(tmp) / "pool.npz", Path(tmp) / "proj", Path(tmp) / "server.log"
        ds.save(data)
        t0 = time.perf_counter()
        proc, url = start_server(data, state, log, ["--candidate-size", str(args.candidate_size), *common])
        print(f"pool {args.n} x {args.d}, {args.c} classes, candidate size {args.candidate_size}; server up in "
              f"{time.perf_counter() - t0:.1f}s at {url}")
        try:
            timings, acked_browser = browser_phase(url, ds.train_labels, ds.class_names, args.browser_answers,
                                                   args.read_ms)
            print(f"browser: {len(timings)} answers by keyboard, answer -> next item painted: "
                  f"p50 {pct(timings, 50):.1f} ms, p90 {pct(timings, 90):.1f} ms, p99 {pct(timings, 99):.1f} ms, "
                  f"max {max(timings):.1f} ms")
            stress = stress_phase(url, ds.train_labels, ds.class_names, args.stress_answers)
            alive = proc.poll() is None
            rtts = stress["rtts"]
            print(f"stress: 4 clients, {len(stress['acked'])} answers acknowledged, {stress['stale']} stale (refused), "
                  f"{len(stress['errors'])} errors in {stress['seconds']:.1f}s "
                  f"({len(stress['acked']) / stress['seconds']:.1f} answers/s); answer round trip under contention: "
                  f"p50 {pct(rtts, 50):.1f} ms, p99 {pct(rtts, 99):.1f} ms; server up: {alive}")
            for e in stress["errors"][:3]:
                print(f"  error: {e}")
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)  # a crash: whatever was acknowledged must be on disk
            proc.wait(timeout=60)
        acked = {**acked_browser, **stress["acked"]}
        session = Session.resume(state, ds.train_features)
        try:
            on_disk = session.labels
            tells = sum(1 for e in session.events if e["op"] == "tell")
        finally:
            session.close()
        lost = sum(1 for i, c in acked.items() if on_disk.get(i) != c)
        print(f"after SIGKILL: {len(on_disk)} labels in the log ({tells} tell events) for {len(acked)} acknowledged "
              f"answers; lost {lost}")
        failed = not alive or stress["hung"] or bool(stress["errors"]) or tells != len(acked)
        if failed:
            print(f"FAILED: server up {alive}, clients hung {stress['hung']}, {len(stress['errors'])} errors, "
                  f"{tells} tell events for {len(acked)} acknowledged answers", file=sys.stderr)
        big = img = "n/a"
        if args.big_pool > 0:
            del ds  # the big pool's features take the memory
            big_ds = make_pool(args.big_pool, args.d, args.c, 100, seed=1)
            t = browser_only(big_ds, Path(tmp), "big", ["--candidate-size", str(args.big_candidate_size), *common],
                             args.big_answers, args.read_ms)
            big = f"{pct(t, 50):.1f}"
            del big_ds
        if args.image_pool > 0:
            t = browser_only(make_image_pool(args.image_pool, args.c, 100), Path(tmp), "images", common,
                             args.image_answers, args.read_ms)
            img = f"{pct(t, 50):.1f}"
    print(f"serve_p50_ms={pct(timings, 50):.1f} serve_p99_ms={pct(timings, 99):.1f} serve_1m_p50_ms={big} "
          f"serve_img_p50_ms={img} lost={lost}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()

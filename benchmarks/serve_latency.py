"""End-to-end latency and robustness of ``bayesal serve`` on a 20,000 × 384, 10-class pool.

A real server process (``python -m bayesal serve`` on 127.0.0.1, default settings: margin strategy
over 1,000 random candidates, fsync-ed label log, no automatic retraining) on a synthetic pool saved
as a features file, then two phases:

1. **Browser** — headless Chromium (Playwright, ``/usr/bin/chromium``) labels ``--browser-answers``
   items by keyboard. The page records, for each answer, the time from the key press to the next
   item painted (``requestAnimationFrame`` after the DOM update): HTTP round trip + Bayesian update +
   durable log line + the strategy's next pick + rendering. Like a person, the script presses the next
   key after the live panel has refreshed (a person needs far longer than that to read an item).
2. **Stress** — 4 concurrent HTTP clients (threads, each its own client id) answer as fast as they
   can until ``--stress-answers`` answers are acknowledged in total. Stale answers (an item that
   another client labeled first) are counted, not retried. The server is then killed with SIGKILL
   and the session is reopened from disk: ``lost`` = acknowledged answers (both phases) whose label
   is not in the log. The server must stay up throughout.

The machine is shared (2 cores, other jobs running): absolute times are noisy. Last line::

    serve_p50_ms=<browser median> serve_p99_ms=<browser p99> lost=<labels lost>

    python benchmarks/serve_latency.py [--n 20000] [--d 384] [--c 10] [--browser-answers 200] [--stress-answers 1000]
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(data: Path, state: Path, log: Path) -> tuple[subprocess.Popen, str]:
    import httpx

    port = free_port()
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "bayesal", "serve", "--dataset", str(data), "--state-dir", str(state),
           "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env)  # noqa: SIM115
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 300
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
    raise RuntimeError("the server did not start within 300 s")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def browser_phase(url: str, truth: np.ndarray, names: list[str], answers: int) -> tuple[list[float], dict[int, int]]:
    from playwright.sync_api import sync_playwright

    acked: dict[int, int] = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_context().new_page()
        page.set_default_timeout(60_000)
        page.goto(url)
        page.wait_for_selector("body[data-ready='1']")
        page.wait_for_function("window.bayesalRenders >= 1")
        keys = {c["label"]: c["key"] for c in page.evaluate("fetch('/api/info', {headers: {'X-Bayesal-Token': '-'}})"
                                                             ".then(r => r.json())")["classes"]}
        for k in range(answers):
            i = int(page.get_attribute("#card", "data-index"))
            label = names[int(truth[i])]
            page.keyboard.press(keys[label])
            page.wait_for_function("n => window.bayesalTimings.length > n", arg=k)
            acked[i] = int(truth[i])
            page.wait_for_selector(f"#panel[data-labels='{k + 1}']")  # the panel caught up
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--c", type=int, default=10)
    ap.add_argument("--n-test", type=int, default=1000, help="held-out rows (the live panel's learning curve)")
    ap.add_argument("--browser-answers", type=int, default=200)
    ap.add_argument("--stress-answers", type=int, default=1000)
    args = ap.parse_args()
    if not Path(CHROMIUM).exists():
        sys.exit(f"{CHROMIUM} not found: apt-get install chromium")

    ds = make_pool(args.n, args.d, args.c, args.n_test)
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        data, state, log = Path(tmp) / "pool.npz", Path(tmp) / "proj", Path(tmp) / "server.log"
        ds.save(data)
        t0 = time.perf_counter()
        proc, url = start_server(data, state, log)
        print(f"pool {args.n} x {args.d}, {args.c} classes; server up in {time.perf_counter() - t0:.1f}s at {url}")
        try:
            timings, acked_browser = browser_phase(url, ds.train_labels, ds.class_names, args.browser_answers)
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
    print(f"serve_p50_ms={pct(timings, 50):.1f} serve_p99_ms={pct(timings, 99):.1f} lost={lost}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()

"""Latency of ``Session.tell`` (Bayesian update + durable persistence) on a 384-d, 10-class posterior.

Synthetic pool (default 20,000 × 384, 10 classes). Each tell = validation, the closed-form update of
the 384×384 covariance and the mean, one fsync-ed label-log line, and handing the snapshot (1.2 MB
posterior + events) to the background writer, which replaces ``session.state`` atomically while the
next labels come in. Figures are printed for:

* ``durable``      — the default: log line fsync-ed before ``tell`` returns; snapshot in the background,
  at most every ``snapshot_interval`` = 0.2 s (bursts of labels coalesce);
* ``durable-each`` — same, but a background snapshot after every label (``snapshot_interval=0``);
* ``no-fsync``     — the default without any fsync (for comparison: what the disk flush costs);
* ``sync-snap``    — snapshot written synchronously (atomic + fsync) inside every ``tell``;
* ``memory``       — no ``state_dir`` at all (update only).

The last line is ``tell_latency_ms=<median of the durable mode>``.

    python benchmarks/tell_latency.py [--n 20000] [--d 384] [--c 10] [--tells 300]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch

from bayesal.labeling.session import Session
from bayesal.laplace import PosteriorOptions


def _make_pool(n: int, d: int, c: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(c, d)) / np.sqrt(d) * 4
    y = rng.integers(0, c, size=n)
    x = (centers[y] + rng.normal(size=(n, d)) / np.sqrt(d)).astype(np.float32)
    return x, y


def _run(x: np.ndarray, y: np.ndarray, c: int, tells: int, mode: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(dir=".") as tmp:
        kwargs: dict = dict(strategy="random", random_state=0, options=PosteriorOptions(gamma=10.0))
        if mode != "memory":
            kwargs.update(state_dir=tmp, fsync=mode != "no-fsync", async_snapshot=mode != "sync-snap")
        if mode == "durable-each":
            kwargs.update(snapshot_interval=0.0)
        session = Session(x, [f"class{k}" for k in range(c)], **kwargs)
        order = np.random.default_rng(1).permutation(len(y))[: tells + 5]
        for i in order[:5]:  # warm-up
            session.tell(int(i), int(y[i]))
        times = []
        for i in order[5:]:
            t0 = time.perf_counter()
            session.tell(int(i), int(y[i]))
            times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        session.close()
        close_s = time.perf_counter() - t0
    ms = sorted(1e3 * t for t in times)
    return {
        "median": statistics.median(ms),
        "p90": ms[int(0.9 * (len(ms) - 1))],
        "p99": ms[int(0.99 * (len(ms) - 1))],
        "mean": statistics.fmean(ms),
        "close_ms": 1e3 * close_s,
    }


def _fsync_baseline(n: int = 200) -> float:
    """Median ms of appending a 100-byte line and fsync-ing it: the disk's share of a durable tell."""
    import os

    with tempfile.TemporaryDirectory(dir=".") as tmp:
        fd = os.open(os.path.join(tmp, "probe"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            os.write(fd, b"x" * 99 + b"\n")
            os.fsync(fd)
            times.append(1e3 * (time.perf_counter() - t0))
        os.close(fd)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20_000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--c", type=int, default=10)
    ap.add_argument("--tells", type=int, default=300)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tells < 200:
        raise SystemExit("use at least 200 tells")
    x, y = _make_pool(args.n, args.d, args.c)
    print(f"pool {args.n} x {args.d}, {args.c} classes, {args.tells} tells, torch threads {torch.get_num_threads()}")
    print(f"disk baseline: append + fsync of a 100-byte line, median {_fsync_baseline():.3f} ms")
    results = {}
    for mode in ("memory", "no-fsync", "sync-snap", "durable-each", "durable"):
        r = _run(x, y, args.c, args.tells, mode)
        results[mode] = r
        print(
            f"{mode:>12}: median {r['median']:.3f} ms | p90 {r['p90']:.3f} | p99 {r['p99']:.3f} | "
            f"mean {r['mean']:.3f} | close {r['close_ms']:.1f} ms"
        )
    print(f"tell_latency_ms={results['durable']['median']:.3f}")


if __name__ == "__main__":
    main()

"""Scale: top-b scoring of a 10,000,000 × 384 memory-mapped pool, Ray vs one process, sequential vs BADGE.

In one run and process (figures are noisy on a shared machine; ratios are measured side by side):

(a) A float32 ``.npy`` pool of ``--rows`` × ``--dim`` (default 10M × 384, 15 GB) is written chunk by
    chunk under ``--dir`` (default /tmp) and deleted at the end. Mean-field margin, top-b (b=100), is
    scored over it in chunks (float32 products): time, rows/s and the peak resident memory of the
    scoring phase. The machine's float32 GEMM rate is measured in the same process on the chunk's
    shape; ``gemm_limit_ratio`` = achieved flops / GEMM rate, with 2D² + 2CD flops per row (the dense
    count: a posterior that has seen fewer than D/2 points takes its variances through the low-rank
    form of Σ, 2Dr flops, so the ratio can exceed 1). Then a 100,000-row shortlist drawn at random
    from the pool goes through sequential margin (b=100) in RAM.
(b) The same pool through ``bayesal.distributed.score_pool`` with Ray (2 workers, 2 parts) vs the
    single-process result: equal indices and scores?
(c) Sequential margin vs BADGE (b=100) on in-memory pools of 100,000 and 1,000,000 × 384: each run
    twice, alternating, and the faster run of each kept. Measured first, before the 10M pool is
    written (its page cache, reclaimed afterwards, slowed later in-memory queries in some runs).

Sequential margin takes its pool products in float32 (``compute_dtype=torch.float32``: the per-pick
``O(N·D)`` refresh is bound by memory traffic) with the posterior and its caches in float64; BADGE
runs as the library ships it.

Synthetic features: 10 Gaussian class clusters, rows L2-normalised (like sentence embeddings); the
posterior is fitted on 100 labeled rows. Last line:
``peak_rss_gib_10m=<> rows_per_s_10m=<> gemm_limit_ratio=<> seq_vs_badge_time_ratio=<at 100k> ray_equal=<1|0>``

    python benchmarks/scale.py [--rows 10000000] [--dim 384] [--dir /tmp] [--skip-ray] [--sizes 100000 1000000]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bayesal import LastLayerLaplace
from bayesal.data.pool import NpyPool
from bayesal.distributed import score_pool
from bayesal.strategies import BADGE, MarginSampling, Sequential

C = 10
CHUNK_ROWS = 20_000  # divides every part boundary of a 2-way split of 10M rows: the same chunks everywhere


def clusters(rng: np.random.Generator, centers: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` L2-normalised float32 rows around ``centers`` and their labels."""
    y = rng.integers(0, len(centers), size=n)
    x = centers[y] + rng.standard_normal((n, centers.shape[1]), dtype=np.float32) * np.float32(2.0)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, y


def write_pool(path: Path, rows: int, centers: np.ndarray, seed: int) -> None:
    """A C-order float32 .npy written in chunks (never all in memory, no mapping held)."""
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                "shape": (rows, centers.shape[1])})
        for start in range(0, rows, 250_000):
            x, _ = clusters(rng, centers, min(250_000, rows - start))
            x.tofile(f)


def reset_peak_rss() -> bool:
    """Reset the kernel's resident-memory high-water mark of this process (Linux ≥ 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_gib() -> float:
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def gemm_rate(rows: int, d: int, seconds: float = 3.0) -> float:
    """Best float32 GEMM rate (flop/s) of ``(rows, d) @ (d, d)`` in this process."""
    a = torch.randn(rows, d)
    b = torch.randn(d, d)
    out = torch.empty(rows, d)
    torch.mm(a, b, out=out)
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        for _ in range(5):
            torch.mm(a, b, out=out)
        best = max(best, 5 * 2.0 * rows * d * d / (time.perf_counter() - t0))
    return best


def fit_posterior(centers: np.ndarray, seed: int) -> LastLayerLaplace:
    x, y = clusters(np.random.default_rng(seed + 1), centers, 100)
    return LastLayerLaplace(random_state=seed).fit(x.astype(np.float64), y, num_classes=C)


def seq_vs_badge(post: LastLayerLaplace, x: torch.Tensor, b: int, seed: int, repeats: int = 2) -> tuple[float, float]:
    """Seconds of sequential margin and of BADGE on ``x``: each run ``repeats`` times, alternating, the
    fastest run of each (the first touches of fresh memory and other processes' bursts only slow down)."""
    gen = lambda: torch.Generator().manual_seed(seed)  # noqa: E731
    seq, badge = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        Sequential(MarginSampling(), update_with="most_likely", compute_dtype=torch.float32).query(post, x, None, b, gen())
        seq.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        BADGE().query(post, x, None, b, gen())
        badge.append(time.perf_counter() - t0)
    return min(seq), min(badge)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--b", type=int, default=100)
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--shortlist", type=int, default=100_000)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    d = args.dim
    centers = np.random.default_rng(args.seed).standard_normal((C, d), dtype=np.float32)
    post = fit_posterior(centers, args.seed)
    print(f"torch threads={torch.get_num_threads()} cpus={os.cpu_count()} (a shared, loaded machine: absolute "
          "times are noisy; ratios are measured side by side)")

    # (c) first: once the 10M pool has been written and read, the kernel reclaiming its page cache
    # slowed later in-memory queries (two-thread products) by up to 40 % in some runs
    ratios = {}
    for n in args.sizes:
        x, _ = clusters(np.random.default_rng(args.seed + 3), centers, n)
        seq_s, badge_s = seq_vs_badge(post, torch.from_numpy(x), args.b, args.seed)
        ratios[n] = seq_s / badge_s
        print(f"(c) {n:,} x {d}, b={args.b}: sequential margin {seq_s:.1f} s, BADGE {badge_s:.1f} s, "
              f"ratio {ratios[n]:.2f}")
        del x

    workdir = Path(tempfile.mkdtemp(prefix="bayesal-scale-", dir=args.dir))
    path = workdir / "pool.npy"
    try:
        t0 = time.perf_counter()
        write_pool(path, args.rows, centers, args.seed)
        gib = path.stat().st_size / 2**30
        print(f"(a) wrote {args.rows:,} x {d} float32 ({gib:.1f} GiB) to {path} in {time.perf_counter() - t0:.0f} s")
        rate = gemm_rate(CHUNK_ROWS, d)
        flops_per_row = 2 * d * d + 2 * C * d
        print(f"    float32 GEMM ({CHUNK_ROWS} x {d}) @ ({d} x {d}): {rate / 1e9:.1f} GFLOP/s -> limit "
              f"{rate / flops_per_row / 1e6:.2f} M rows/s at {flops_per_row} flop/row")
        pool = NpyPool(path)
        reset_ok = reset_peak_rss()
        base_rss = peak_rss_gib()
        t0 = time.perf_counter()
        local = score_pool(MarginSampling(), post, pool, args.b, backend="local", chunk_rows=CHUNK_ROWS)
        score_s = time.perf_counter() - t0
        peak = peak_rss_gib()
        rows_per_s = args.rows / score_s
        ratio = rows_per_s * flops_per_row / rate
        print(f"    top-{args.b} margin: {score_s:.1f} s, {rows_per_s / 1e6:.2f} M rows/s, {ratio:.2f} of the GEMM "
              f"limit; peak RSS while scoring {peak:.2f} GiB (before: {base_rss:.2f} GiB"
              f"{'' if reset_ok else '; high-water mark not resettable, includes set-up'})")

        rng = np.random.default_rng(args.seed + 2)
        short_idx = np.sort(rng.choice(args.rows, size=min(args.shortlist, args.rows), replace=False))
        t0 = time.perf_counter()
        short = torch.from_numpy(pool.take(short_idx))
        take_s = time.perf_counter() - t0
        gen = torch.Generator().manual_seed(args.seed)
        t0 = time.perf_counter()
        Sequential(MarginSampling(), update_with="most_likely", compute_dtype=torch.float32).query(
            post, short, None, args.b, gen)
        print(f"    sequential margin over a random {len(short_idx):,}-row shortlist (rows read in {take_s:.1f} s): "
              f"{time.perf_counter() - t0:.1f} s for b={args.b}")

        ray_equal = -1
        if not args.skip_ray:
            import ray

            t0 = time.perf_counter()
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            init_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            dist = score_pool(MarginSampling(), post, pool, args.b, backend="ray", n_parts=2, chunk_rows=CHUNK_ROWS)
            ray_s = time.perf_counter() - t0
            ray.shutdown()
            ray_equal = int(torch.equal(dist.indices, local.indices) and torch.equal(dist.utilities, local.utilities))
            print(f"(b) Ray, 2 workers x 2 parts: {ray_s:.1f} s ({args.rows / ray_s / 1e6:.2f} M rows/s; ray.init "
                  f"{init_s:.0f} s) vs one process {score_s:.1f} s; identical result: {bool(ray_equal)}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    at_100k = ratios.get(100_000, next(iter(ratios.values())) if ratios else float("nan"))
    print(f"peak_rss_gib_10m={peak:.2f} rows_per_s_10m={rows_per_s:.0f} gemm_limit_ratio={ratio:.2f} "
          f"seq_vs_badge_time_ratio={at_100k:.2f} ray_equal={ray_equal if ray_equal >= 0 else 0}")


if __name__ == "__main__":
    main()

"""GPU code paths of the posterior: results equal the CPU ones, and the pool is scored in chunks.

Run on a machine with CUDA: ``python benchmarks/gpu_check.py``. Prints one line per check and a last
line ``gpu_check=ok mc_rows_per_s=<x> peak_extra_gib=<y>`` (``peak_extra_gib``: GPU memory above the
float32 pool while scoring a 1,000,000 × 384 pool with the mean-field predictive). Exits 1 on a mismatch;
without CUDA it says so and exits 0.
"""

from __future__ import annotations

import sys
import time

import torch

from bayesal import LastLayerLaplace


def main(argv: list[str]) -> int:
    dry = "--dry-run-on-cpu" in argv  # exercise the script itself without a GPU (small pool)
    if not torch.cuda.is_available() and not dry:
        print("gpu_check=skipped (no CUDA device)")
        return 0
    dev = torch.device("cpu" if dry else "cuda")
    sync = (lambda: None) if dry else torch.cuda.synchronize
    print(f"device: {'cpu (dry run)' if dry else torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    g = torch.Generator().manual_seed(0)
    n, d, c = 2000, 384, 10
    x = torch.randn(n, d, generator=g)
    y = torch.randint(0, c, (n,), generator=g)
    w = torch.randn(c, d, generator=g) * 0.05
    ok = True

    def check(name: str, a: torch.Tensor, b: torch.Tensor, tol: float) -> None:
        nonlocal ok
        err = float((a.detach().cpu() - b.detach().cpu()).abs().max())
        good = err <= tol
        ok &= good
        print(f"{name:40s} max |gpu - cpu| = {err:.2e} {'ok' if good else 'MISMATCH'}")

    for hessian in ("shared", "full"):
        cpu = LastLayerLaplace(hessian=hessian).fit(x[:500], y[:500], weight=w, num_classes=c)
        gpu = LastLayerLaplace(hessian=hessian, device=dev).fit(x[:500], y[:500], weight=w, num_classes=c)
        assert gpu.covariance_.device.type == dev.type
        check(f"{hessian}: covariance", gpu.covariance_, cpu.covariance_, 1e-9)
        cu, gu = cpu.update(x[500:520], y[500:520]), gpu.update(x[500:520].to(dev), y[500:520].to(dev))
        check(f"{hessian}: updated mean", gu.mean_, cu.mean_, 1e-8)
        check(f"{hessian}: mean-field predictive", gu.predict_proba(x[:300]), cu.predict_proba(x[:300]), 1e-9)
        gen = torch.Generator(device=dev).manual_seed(0)  # a generator on the device
        mc = gu.predict_proba(x[:300].to(dev), method="mc", n_samples=20000, generator=gen)
        check(f"{hessian}: MC, device generator, vs CPU MC", mc, cu.predict_proba(x[:300], method="mc", n_samples=20000, generator=torch.Generator().manual_seed(1)), 0.03)
        seeded = LastLayerLaplace(hessian=hessian, device=dev, random_state=3).fit(x[:500], y[:500], weight=w, num_classes=c)
        check(f"{hessian}: seeded MC reproducible", seeded.predict_proba(x[:50], method="mc", n_samples=100),
              seeded.predict_proba(x[:50], method="mc", n_samples=100), 0.0)

    post = LastLayerLaplace(device=dev).fit(x[:500], y[:500], weight=w, num_classes=c)
    n_pool = 20_000 if dry else 1_000_000
    pool = torch.randn(n_pool, d, device=dev)  # float32 (1.43 GiB for 1M rows)
    sync()
    if not dry:
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    probs = post.predict_proba(pool)
    sync()
    peak_extra = float("nan") if dry else (torch.cuda.max_memory_allocated() - base) / 2**30
    print(f"{n_pool:,} x 384 mean-field: output {tuple(probs.shape)}, extra peak {peak_extra:.2f} GiB")
    del probs
    n_mc = 2_000 if dry else 100_000
    t0 = time.perf_counter()
    post.predict_proba(pool[:n_mc], method="mc", n_samples=1000)
    sync()
    rate = n_mc / (time.perf_counter() - t0)
    print(f"MC K=1000: {rate:,.0f} rows/s")
    print(f"gpu_check={'ok' if ok else 'FAILED'} mc_rows_per_s={rate:.0f} peak_extra_gib={peak_extra:.2f}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

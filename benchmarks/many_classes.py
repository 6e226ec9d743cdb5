"""Many classes: fit, one-point update and predictive of the shared-covariance posterior at C up to 10,000.

For each number of classes ``C`` (default 100, 1,000, 10,000), ``D = 768`` features and 1,000 labeled
points, a fresh subprocess (so that each ``C`` has its own peak memory) measures

* ``fit_s``: ``LastLayerLaplace(prior_precision=..., spread=1.0).fit`` — the exact MAP head by
  L-BFGS and the covariance ``Σ (D, D)``; λ₀ is fixed (``--prior``, default 1.0: the cross-validated
  choice fits the head ``5 × 5`` more times, ``--prior cv`` measures it);
* ``update_ms``: median of ``--updates`` chained one-point updates (``update``: the Newton iteration
  and the factors of the mean's correction and of the covariance's downdate, both left pending), and
  ``update_dense_ms`` the same with ``μ'`` and ``Σ'`` formed (as the next query reads them);
* ``predict_s``: the mean-field predictive ``(10,000, C)`` of 10,000 pool points;
* ``peak_gib``: the process's peak resident memory (``ru_maxrss``), and ``base_gib`` the peak after
  the imports and the data alone.

The data: Gaussian features (float32, norm about 1) labeled by a random linear teacher. The machine is
shared: times are noisy. The comparison with laplace-torch 0.3's last-layer Laplace (diag and kron
GGN) runs in a separate virtual environment given by ``--laplace-torch-python`` (never a dependency
of bayesal; see ``laplace_torch_cell`` below for what it measures), else ``speedup_vs_laplace_torch=n/a``.
Last line::

    update_ms_10k=<update at C = 10,000> peak_gib_10k=<peak RSS at C = 10,000> speedup_vs_laplace_torch=<min ratio>

    python benchmarks/many_classes.py [--classes 100,1000,10000] [--dim 768] [--labeled 1000] [--pool 10000]
    python benchmarks/many_classes.py --quick     # C = 100, 1000 with 200 labeled points (a minute)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")
#: Bytes of laplace-torch's predictive Jacobians one batch may take.
JACOBIAN_BUDGET = 2**30


def peak_gib() -> float:
    """Peak resident memory of this process in GiB (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def make_data(c: int, d: int, n: int, pool: int, seed: int = 0):  # noqa: ANN201 - numpy arrays
    """Features ``(n, D)``, labels ``(n,)``, pool ``(pool, D)`` float32 and labels of a linear teacher."""
    import numpy as np

    rng = np.random.default_rng(seed)
    teacher = rng.standard_normal((c, d)).astype(np.float32)
    x = (rng.standard_normal((n + pool, d)) / np.sqrt(d)).astype(np.float32)
    # labels in blocks of rows: the (rows, C) teacher logits of all rows would set the peak memory
    blocks = [x[i : min(i + 500, n)] for i in range(0, n, 500)]
    y = np.concatenate([np.argmax(b @ teacher.T * 3.0 + rng.gumbel(size=(len(b), c)).astype(np.float32), 1)
                        for b in blocks])
    return x[:n], y, x[n:]


def bayesal_cell(c: int, d: int, n: int, pool: int, updates: int, prior: str) -> dict:
    """One ``C``: fit, chained one-point updates, predictive; in this (fresh) process."""
    import torch

    from bayesal.laplace import LastLayerLaplace

    x, y, xp = make_data(c, d, n, pool)
    base = peak_gib()
    lam: float | str = prior if prior in ("cv", "evidence") else float(prior)
    t0 = time.perf_counter()
    post = LastLayerLaplace(prior_precision=lam, spread=1.0).fit(x, y, num_classes=c)
    fit_s = time.perf_counter() - t0
    # updates past the early phase (it refits the head exactly with at most 64 labels; 1,000 here)
    rng = torch.Generator().manual_seed(1)
    new = torch.randn(updates, d, generator=rng, dtype=torch.float64) / d**0.5
    labels = torch.randint(0, c, (updates,), generator=rng)
    lazy, dense = [], []
    cur = post
    for i in range(updates):
        t0 = time.perf_counter()
        nxt = cur.update(new[i : i + 1], labels[i : i + 1])
        t1 = time.perf_counter()
        _ = nxt.covariance_, nxt.mean_  # the downdate and the mean formed, as the next query reads them
        t2 = time.perf_counter()
        lazy.append(t1 - t0)
        dense.append(t2 - t0)
        cur = nxt
    t0 = time.perf_counter()
    probs = cur.predict_proba(xp)
    predict_s = time.perf_counter() - t0
    assert probs.shape == (pool, c) and bool(torch.isfinite(probs).all())
    return {
        "C": c, "D": d, "N": n, "fit_s": round(fit_s, 3),
        "update_ms": round(1e3 * statistics.median(lazy), 3), "update_dense_ms": round(1e3 * statistics.median(dense), 3),
        "predict_s": round(predict_s, 3), "peak_gib": round(peak_gib(), 3), "base_gib": round(base, 3),
        "prior_precision": post.fitted_prior_precision,
    }


def laplace_torch_cell(c: int, d: int, n: int, pool: int, structure: str) -> dict:
    """laplace-torch 0.3 on the same shapes: ``Laplace(model, "classification", subset_of_weights=
    "last_layer", hessian_structure=structure)`` around a ``Linear(D, C)`` head with the same MAP
    training left out (the head is taken as given, as laplace-torch expects a trained model): ``fit``
    over the 1,000 labeled points; as its update a refit on them plus one (its last-layer Laplace
    refuses ``fit(..., override=False)``); the predictive (``pred_type="glm"``, ``link_approx="probit"``)
    of the pool in batches that keep its Jacobians within :data:`JACOBIAN_BUDGET`."""
    import torch
    from laplace import Laplace  # type: ignore[import-not-found]
    from torch.utils.data import DataLoader, TensorDataset

    # its GLM predictive forms the last-layer Jacobians (batch, C, C·(D + 1)) in float32: more than
    # JACOBIAN_BUDGET for one point is not attempted (a shared machine), batches stay within it
    per_point = 4 * c * c * (d + 1)
    if per_point > JACOBIAN_BUDGET:
        return {"C": c, "structure": structure,
                "error": f"predictive needs {per_point / 2**30:.1f} GiB of Jacobians per point (not attempted)"}
    batch = max(1, JACOBIAN_BUDGET // per_point)
    x, y, xp = make_data(c, d, n, pool)
    model = torch.nn.Sequential(torch.nn.Identity(), torch.nn.Linear(d, c))
    base = peak_gib()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y).long()
    loader = DataLoader(TensorDataset(xt, yt), batch_size=100)
    la = Laplace(model, "classification", subset_of_weights="last_layer", hessian_structure=structure)
    t0 = time.perf_counter()
    la.fit(loader)
    fit_s = time.perf_counter() - t0
    # laplace-torch's last-layer Laplace refuses fit(..., override=False): a new label is a refit on all
    more = DataLoader(TensorDataset(torch.cat([xt, xt[:1]]), torch.cat([yt, yt[:1]])), batch_size=100)
    t0 = time.perf_counter()
    la.fit(more)
    update_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for start in range(0, pool, batch):
        la(torch.from_numpy(xp[start : start + batch]), pred_type="glm", link_approx="probit")
    predict_s = time.perf_counter() - t0
    return {"C": c, "structure": structure, "fit_s": round(fit_s, 3), "update_ms": round(1e3 * update_s, 3),
            "predict_s": round(predict_s, 3), "peak_gib": round(peak_gib(), 3), "base_gib": round(base, 3)}


def run_cell(python: str, args: list[str], timeout: float) -> dict:
    """One measurement in a fresh interpreter; ``{"error": ...}`` if it fails or runs out of time."""
    env = {"PYTHONPATH": SRC, "PATH": "/usr/bin:/bin"}
    try:
        out = subprocess.run([python, __file__, *args], capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout:.0f} s"}
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or [f"exit {out.returncode}"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", default="100,1000,10000")
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--labeled", type=int, default=1000)
    ap.add_argument("--pool", type=int, default=10000)
    ap.add_argument("--updates", type=int, default=20)
    ap.add_argument("--prior", default="1.0", help="λ₀: a number, 'cv' or 'evidence'")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per cell")
    ap.add_argument("--quick", action="store_true", help="C = 100, 1000 with 200 labeled points and a 2,000 pool")
    ap.add_argument("--laplace-torch-python", default=None,
                    help="python of a separate venv with laplace-torch==0.3 for the side-by-side comparison")
    ap.add_argument("--cell", default=None, help=argparse.SUPPRESS)  # internal: one measurement, as JSON
    a = ap.parse_args()
    if a.cell is not None:
        kind, c = a.cell.split(":")
        if kind == "bayesal":
            res = bayesal_cell(int(c), a.dim, a.labeled, a.pool, a.updates, a.prior)
        else:
            res = laplace_torch_cell(int(c), a.dim, a.labeled, a.pool, kind)
        print(json.dumps(res))
        return
    if a.quick:
        a.classes, a.labeled, a.pool, a.updates = "100,1000", 200, 2000, 10
    classes = [int(v) for v in a.classes.split(",")]
    shape = ["--dim", str(a.dim), "--labeled", str(a.labeled), "--pool", str(a.pool), "--updates", str(a.updates),
             "--prior", a.prior]
    print(f"D = {a.dim}, {a.labeled} labeled points, predictive of {a.pool} points, λ₀ = {a.prior}")
    ours: dict[int, dict] = {}
    for c in classes:
        ours[c] = run_cell(sys.executable, ["--cell", f"bayesal:{c}", *shape], a.timeout)
        print("bayesal", json.dumps(ours[c]), flush=True)
    ratios: list[float] = []
    if a.laplace_torch_python:
        for c in classes:
            for structure in ("diag", "kron"):
                theirs = run_cell(a.laplace_torch_python, ["--cell", f"{structure}:{c}", *shape], a.timeout)
                print(f"laplace-torch {structure}", json.dumps(theirs), flush=True)
                if "error" not in theirs and "error" not in ours[c]:
                    ratios.append((theirs["fit_s"] + theirs["predict_s"]) / (ours[c]["fit_s"] + ours[c]["predict_s"]))
    top = ours.get(10000, {})
    print(f"update_ms_10k={top.get('update_ms', 'n/a')} peak_gib_10k={top.get('peak_gib', 'n/a')} "
          f"speedup_vs_laplace_torch={f'{min(ratios):.2f}' if ratios else 'n/a'}")


if __name__ == "__main__":
    main()

"""Head fit: the exact MAP head (preconditioned L-BFGS, the library default) vs the paper's recipe.

For each data set, labeled-set size and seed (the same random labeled rows for both), fits

* the exact MAP head for λ₀ chosen by 5-fold cross-validation (``LastLayerLaplace()``'s default),
  timed twice: the λ₀ selection including its final fit on all rows (what ``fit`` costs), and the
  fit alone from a zero head at the chosen λ₀ (the head fit proper);
* the paper's recipe (``HeadConfig.paper()``: 200 epochs of RAdam, batch 64, weight decay 1e-4),

and reports test accuracy (paired difference, mean ± 95 % CI in percentage points) and median times.
Last line::

    head_acc_gap_pp_min=<worst mean (exact − paper) accuracy over data sets at 100 labels>
    head_speedup=<median paper time / exact fit time at 100 labels>
    head_speedup_with_cv=<median paper time / (λ₀ selection + fit) at 100 labels>

Usage: python benchmarks/head_fit.py [--datasets bbcnews,animals,mnist5k,digits] [--seeds 10]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import pandas as pd
import torch
from fidelity_common import accuracy, load_split, t975

from bayesal import HeadConfig
from bayesal.laplace.evidence import cross_validate_prior
from bayesal.laplace.head import fit_map_head, train_head

SIZES = (100, 1000)
DATASETS = ("bbcnews", "animals", "mnist5k", "digits")


def run_dataset(name: str, seeds: int) -> list[dict]:
    x, y, xte, yte, c = load_split(name)
    rows = []
    for n in SIZES:
        if n >= len(y):
            continue
        for seed in range(seeds):
            idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n]
            onehot = torch.nn.functional.one_hot(y[idx], c).double()
            t0 = time.perf_counter()
            sel = cross_validate_prior(x[idx], onehot, generator=torch.Generator().manual_seed(seed))
            t_cv = time.perf_counter() - t0
            t0 = time.perf_counter()
            fit = fit_map_head(x[idx], onehot, sel.prior_precision)
            t_fit = time.perf_counter() - t0
            t0 = time.perf_counter()
            wp, bp = train_head(x[idx], y[idx], c, config=HeadConfig.paper(), generator=torch.Generator().manual_seed(seed))
            t_paper = time.perf_counter() - t0
            rows.append({
                "dataset": name, "n": n, "seed": seed, "prior_precision": sel.prior_precision,
                "acc_exact": accuracy(fit.weight, fit.bias, xte, yte), "acc_paper": accuracy(wp, bp, xte, yte),
                "t_cv": t_cv, "t_fit": t_fit, "t_paper": t_paper, "iters": fit.n_iter,
            })
        print(f"{name} n={n} done", flush=True)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for name in [s.strip() for s in args.datasets.split(",") if s.strip()]:
        rows += run_dataset(name, args.seeds)
    df = pd.DataFrame(rows)
    table = []
    for (name, n), g in df.groupby(["dataset", "n"], sort=False):
        d = 100 * (g.acc_exact - g.acc_paper)
        half = t975(len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d)) if len(d) > 1 else math.nan
        table.append({
            "dataset": name, "labels": n, "seeds": len(g), "exact − paper pp": f"{d.mean():+.2f} ± {half:.2f}",
            "acc exact %": round(100 * g.acc_exact.mean(), 2), "acc paper %": round(100 * g.acc_paper.mean(), 2),
            "t fit ms": round(1e3 * g.t_fit.median(), 1), "t cv+fit ms": round(1e3 * g.t_cv.median(), 1),
            "t paper ms": round(1e3 * g.t_paper.median(), 1),
            "×paper (fit)": round(float((g.t_paper / g.t_fit).median()), 1),
            "×paper (cv+fit)": round(float((g.t_paper / g.t_cv).median()), 1),
        })
    pd.set_option("display.width", 250)
    print(pd.DataFrame(table).to_string(index=False))
    at = df[df.n == 100]
    gap = min(100 * float((g.acc_exact - g.acc_paper).mean()) for _, g in at.groupby("dataset"))
    print(f"torch threads {torch.get_num_threads()}; machine shared, absolute times noisy, ratios paired per seed")
    print(f"head_acc_gap_pp_min={gap:.2f} head_speedup={statistics.median(at.t_paper / at.t_fit):.1f} "
          f"head_speedup_with_cv={statistics.median(at.t_paper / at.t_cv):.1f}")


if __name__ == "__main__":
    main()

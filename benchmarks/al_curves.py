"""Learning curves with the library's defaults (λ₀ by cross-validation, exact MAP head, categorical
curvature, γ = 1, damped multi-step update), paper protocol, paired seeds: random, top-b margin,
BADGE, sequential margin with oracle labels (the paper's simulation) and the deployable
``seq-margin@expected`` and ``lookahead`` (no labels needed).

Writes results (Parquet) and a learning-curve plot per data set, prints the AULC table (mean ± s.e.
over seeds) and the paired AULC difference of each deployable sequential strategy against top-b
margin (mean ± s.e. of the per-seed differences). The LAST line is

    <dataset>: aulc_<strategy>=<x> ... ; deployable_beats_margin=<k>/<n data sets>

Usage: python benchmarks/al_curves.py [--datasets bbcnews,animals,mnist5k] [--seeds 5] [--cycles 20]
[--prior-precision cv-predictive]
(smoke: ``--datasets digits --seeds 2 --cycles 3``).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import pandas as pd
import torch

from bayesal.data import load_dataset
from bayesal.experiments.metrics import aulc
from bayesal.experiments.plotting import aulc_table, plot_learning_curves
from bayesal.experiments.runner import ALConfig, run_experiment
from bayesal.laplace import PosteriorOptions, PriorSelection

STRATEGIES = ["random", "margin", "badge", "seq-margin", "seq-margin@expected", "lookahead"]
DEPLOYABLE = ("seq-margin@expected", "lookahead")


def paired_vs_margin(df: pd.DataFrame) -> dict[str, tuple[float, float, int]]:
    """Per-seed AULC difference (strategy − margin): mean, standard error, seeds."""
    per = (df.sort_values("num_labels").groupby(["strategy", "seed"])
           .apply(lambda s: aulc(s["num_labels"], s["accuracy"]), include_groups=False).unstack("strategy"))
    out = {}
    for s in per.columns:
        if s == "margin":
            continue
        d = (per[s] - per["margin"]).dropna()
        out[s] = (float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else math.nan, len(d))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="bbcnews,animals,mnist5k")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prior-precision", default=None,
                    help="λ₀ or how to choose it (cv, cv-predictive, evidence); default: the posterior's (cv)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    prior = args.prior_precision
    if prior is not None and prior not in PriorSelection.choices():
        prior = float(prior)
    options = PosteriorOptions() if prior is None else PosteriorOptions(prior_precision=prior)
    cfg = ALConfig(batch_size=args.batch_size, cycles=args.cycles, posterior=options)
    args.out.mkdir(parents=True, exist_ok=True)
    summary, wins, n_ds = [], 0, 0
    for name in [n.strip() for n in args.datasets.split(",") if n.strip()]:
        ds = load_dataset(name)
        print(f"dataset={ds.name} train={ds.train_features.shape} classes={ds.num_classes} "
              f"backbone={ds.meta.get('backbone')} config={cfg}", flush=True)
        results = args.out / f"al_curves_{ds.name}.parquet"  # reruns resume finished (strategy, seed) runs
        t0 = time.perf_counter()
        df = run_experiment(ds, strategies, cfg, range(args.seeds), out=results, progress=False)
        plot_learning_curves(df, args.out / f"al_curves_{ds.name}.png", title=f"{ds.name}, b={args.batch_size}")
        tab = aulc_table(df)
        print(tab.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
        diffs = paired_vs_margin(df)
        for s, (m, se, n) in diffs.items():
            print(f"  paired AULC {s} − margin: {m:+.4f} ± {se:.4f} (s.e., {n} seeds)")
        qt = df[df.cycle > 0].groupby("strategy")["query_time_s"].median()
        print("  median query time (s):", " ".join(f"{k}={v:.4f}" for k, v in qt.items()))
        print(f"  total {time.perf_counter() - t0:.0f}s; wrote {results}", flush=True)
        if "margin" in diffs or any(s in diffs for s in DEPLOYABLE):
            n_ds += 1
            wins += any(diffs.get(s, (-1.0,))[0] > 0 for s in DEPLOYABLE)
        a = dict(zip(tab.strategy, tab.aulc_accuracy))
        summary.append(f"{ds.name}: " + " ".join(f"aulc_{k}={v:.4f}" for k, v in a.items()))
    print(" ; ".join(summary) + f" ; deployable_beats_margin={wins}/{n_ds}")


if __name__ == "__main__":
    main()

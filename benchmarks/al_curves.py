"""Learning curves on the built-in text dataset: top-b margin vs sequential margin
(Bayesian update after every pick) vs BADGE vs random, paper protocol, several seeds.

Writes results (Parquet), a learning-curve plot and the AULC table; the LAST line is

    aulc_seq_margin=<x> aulc_margin=<y> aulc_badge=<z> aulc_random=<w>

Usage: python benchmarks/al_curves.py [--dataset bbcnews] [--seeds 5] [--batch-size 10] [--cycles 20]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from bayesal.data import list_datasets, load_dataset
from bayesal.experiments.plotting import aulc_table, plot_learning_curves
from bayesal.experiments.runner import ALConfig, run_experiment
from bayesal.laplace.head import HeadConfig

STRATEGIES = ["seq-margin", "margin", "badge", "random"]


def main(argv=None) -> None:
    names = list(list_datasets())
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="bbcnews" if "bbcnews" in names else "digits", choices=names)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--cycles", type=int, default=20)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ds = load_dataset(args.dataset)
    print(f"dataset={ds.name} train={ds.train_features.shape} test={ds.test_features.shape} "
          f"classes={ds.num_classes} backbone={ds.meta.get('backbone')}")
    cfg = ALConfig(batch_size=args.batch_size, cycles=args.cycles, head=HeadConfig(epochs=args.epochs))
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / f"al_curves_{ds.name}.parquet"
    if results.exists():
        results.unlink()
    t0 = time.perf_counter()
    df = run_experiment(ds, STRATEGIES, cfg, range(args.seeds), out=results)
    plot_learning_curves(df, args.out / f"al_curves_{ds.name}.png", title=f"{ds.name}, b={args.batch_size}")
    tab = aulc_table(df)
    print(tab.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    final = df[df.cycle == args.cycles].groupby("strategy")["accuracy"].mean()
    print("final accuracy:", " ".join(f"{k}={v:.4f}" for k, v in final.items()))
    qt = df[df.cycle > 0].groupby("strategy")["query_time_s"].median()
    print("median query time (s):", " ".join(f"{k}={v:.4f}" for k, v in qt.items()))
    print(f"total {time.perf_counter() - t0:.0f}s; wrote {results}")
    a = dict(zip(tab.strategy, tab.aulc_accuracy))
    print(f"aulc_seq_margin={a['seq-margin']:.4f} aulc_margin={a['margin']:.4f} "
          f"aulc_badge={a['badge']:.4f} aulc_random={a['random']:.4f}")


if __name__ == "__main__":
    main()

"""Update vs retrain (docs/method.md §4): accuracy and time of the closed-form Bayesian update against
the baselines, on real data, measured side by side in one run.

For initial labeled sizes {10, 100, 1000} and new points {1, 10, 50}: accuracy of base / first-order /
MC reweighting / update / retrain / fine-tune (new data, all data), and the time of each. Writes a CSV
and a plot; the LAST line is

    speedup_vs_retrain=<median retrain/update time at 100 init/10 new> acc_gap_pp=<retrain − update, pp>

Usage: python benchmarks/update_vs_retrain.py [--dataset NAME] [--repeats 5] [--out benchmarks/out]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pandas as pd
import torch

from bayesal import LastLayerLaplace
from bayesal.data import list_datasets, load_dataset
from bayesal.experiments.metrics import accuracy
from bayesal.laplace.baselines import MCReweighting, finetune_head, first_order_update, retrain_head

INIT_SIZES = (10, 100, 1000)
NEW_SIZES = (1, 10, 50)
METHODS = ("base", "first_order", "mc", "update", "retrain", "finetune_new", "finetune_all")


TIMING_REPEATS = 3


def _timed(fn, repeats: int | None = None):
    """Run ``fn`` ``repeats`` times; return the first output and the median wall time (s).

    Every method is timed the same way, so one-off allocation costs do not decide the ratio."""
    times, out = [], None
    for k in range(repeats or TIMING_REPEATS):
        t0 = time.perf_counter()
        res = fn()
        times.append(time.perf_counter() - t0)
        out = res if k == 0 else out
    return out, statistics.median(times)


def _head_acc(w, b, x, y):
    return accuracy(torch.softmax(x @ w.T + b, 1), y)


def run_config(ds, n_init, n_new, seed, gamma, finetune_epochs):
    g = torch.Generator().manual_seed(seed)
    xtr = torch.as_tensor(ds.train_features, dtype=torch.float64)
    ytr = torch.as_tensor(ds.train_labels)
    xte = torch.as_tensor(ds.test_features, dtype=torch.float64)
    yte = torch.as_tensor(ds.test_labels)
    perm = torch.randperm(len(ytr), generator=g)
    init, new = perm[:n_init], perm[n_init : n_init + n_new]
    c = ds.num_classes
    w, b = retrain_head(xtr[init], ytr[init], c, generator=g)
    base = LastLayerLaplace(lambda_mf=1.0).fit(xtr[init], ytr[init], weight=w, bias=b, num_classes=c)
    rows = {}
    rows["base"] = (accuracy(base.predict_proba(xte), yte), float("nan"))
    post, t = _timed(lambda: first_order_update(base, xtr[new], ytr[new], gamma=1e-3))
    rows["first_order"] = (accuracy(post.predict_proba(xte), yte), t)
    fresh = [MCReweighting(base, n_samples=1000, gamma=1e-2, generator=g) for _ in range(TIMING_REPEATS)]
    mc, t = _timed(lambda: fresh.pop().update(xtr[new], ytr[new]))  # update() mutates: a fresh one per call
    rows["mc"] = (accuracy(mc.predict_proba(xte), yte), t)
    post, t = _timed(lambda: base.update(xtr[new], ytr[new], gamma=gamma))
    rows["update"] = (accuracy(post.predict_proba(xte), yte), t)
    both = torch.cat([init, new])
    (wr, br), t = _timed(lambda: retrain_head(xtr[both], ytr[both], c, generator=g))
    rows["retrain"] = (_head_acc(wr, br, xte, yte), t)
    (wf, bf), t = _timed(lambda: finetune_head(base, xtr[new], ytr[new], epochs=finetune_epochs, generator=g))
    rows["finetune_new"] = (_head_acc(wf, bf, xte, yte), t)
    (wf, bf), t = _timed(lambda: finetune_head(base, xtr[both], ytr[both], epochs=finetune_epochs, generator=g))
    rows["finetune_all"] = (_head_acc(wf, bf, xte, yte), t)
    return [
        {"n_init": n_init, "n_new": n_new, "seed": seed, "method": m, "accuracy": a, "time_s": t}
        for m, (a, t) in rows.items()
    ]


def gamma_sweep(ds, gammas=(1.0, 3.0, 10.0, 30.0), n_init=100, n_new=10, repeats=10):
    """Mean test accuracy (%) of the update for several step sizes γ, against base and retrain."""
    xtr = torch.as_tensor(ds.train_features, dtype=torch.float64)
    ytr = torch.as_tensor(ds.train_labels)
    xte = torch.as_tensor(ds.test_features, dtype=torch.float64)
    yte = torch.as_tensor(ds.test_labels)
    acc: dict[str, list[float]] = {}
    for seed in range(repeats):
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(ytr), generator=g)
        init, new = perm[:n_init], perm[n_init : n_init + n_new]
        w, b = retrain_head(xtr[init], ytr[init], ds.num_classes, generator=g)
        post = LastLayerLaplace().fit(xtr[init], ytr[init], weight=w, bias=b, num_classes=ds.num_classes)
        acc.setdefault("base", []).append(_head_acc(w, b, xte, yte))
        both = torch.cat([init, new])
        acc.setdefault("retrain", []).append(_head_acc(*retrain_head(xtr[both], ytr[both], ds.num_classes, generator=g), xte, yte))
        for gamma in gammas:
            acc.setdefault(f"update γ={gamma:g}", []).append(accuracy(post.update(xtr[new], ytr[new], gamma=gamma).logits(xte), yte))
    return {k: 100 * statistics.mean(v) for k, v in acc.items()}


def latency_vs_flops(num_classes: int, repeats: int = 300):
    """Median wall time of one single-label update against its FLOP count 2D² + CD."""
    out = []
    for d in (64, 128, 256, 384, 768):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(200, d, generator=g, dtype=torch.float64)
        y = torch.arange(200) % num_classes
        post = LastLayerLaplace().fit(x, y, weight=torch.randn(num_classes, d, generator=g, dtype=torch.float64) * 0.01)
        xs = torch.randn(repeats, 1, d, generator=g, dtype=torch.float64)
        times = []
        for i in range(repeats):
            t0 = time.perf_counter()
            post.update(xs[i], y[i % 200 : i % 200 + 1], inplace=True)
            times.append(time.perf_counter() - t0)
        flops = 2 * d * d + num_classes * d
        us = statistics.median(times) * 1e6
        out.append({"D": d, "C": num_classes, "flops": flops, "median_us": us, "mflop_per_s": flops / us})
    return out


def plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg = df.groupby(["n_init", "n_new", "method"]).agg(acc=("accuracy", "mean"), t=("time_s", "median")).reset_index()
    fig, axes = plt.subplots(2, len(INIT_SIZES), figsize=(5 * len(INIT_SIZES), 8))
    for j, n_init in enumerate(INIT_SIZES):
        sub = agg[agg.n_init == n_init]
        for k, m in enumerate(METHODS):
            s = sub[sub.method == m]
            color = f"C{k}"  # one colour per method in both rows
            axes[0, j].plot(s.n_new, 100 * s.acc, marker="o", label=m, color=color)
            if m != "base":
                axes[1, j].plot(s.n_new, s.t * 1e3, marker="o", label=m, color=color)
        axes[0, j].set(title=f"{n_init} initial labels", xlabel="new labels", ylabel="test accuracy (%)", xscale="log")
        axes[1, j].set(xlabel="new labels", ylabel="time (ms)", yscale="log", xscale="log")
    axes[0, 0].legend(fontsize=8)
    axes[1, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    names = list(list_datasets())
    default = next((n for n in ("bbcnews", "digits") if n in names), names[0])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default=default, choices=names)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--gamma", type=float, default=10.0)
    ap.add_argument("--finetune-epochs", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 avoids noisy small-op timings)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    ds = load_dataset(args.dataset)
    print(f"dataset={ds.name} train={ds.train_features.shape} test={ds.test_features.shape} "
          f"classes={ds.num_classes} backbone={ds.meta.get('backbone')} torch_threads={torch.get_num_threads()}")
    rows = []
    t_start = time.perf_counter()
    for n_init in INIT_SIZES:
        for n_new in NEW_SIZES:
            for seed in range(args.repeats):
                rows += run_config(ds, n_init, n_new, seed, args.gamma, args.finetune_epochs)
    df = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out / "update_vs_retrain.csv", index=False)
    plot(df, args.out / "update_vs_retrain.png")

    acc = df.pivot_table(index=["n_init", "n_new"], columns="method", values="accuracy", aggfunc="mean")[list(METHODS)]
    print("\nmean test accuracy (%) over", args.repeats, "seeds")
    print((100 * acc).round(2).to_string())
    tm = df[df.method != "base"].pivot_table(index=["n_init", "n_new"], columns="method", values="time_s", aggfunc="median")
    print(f"\nmedian time (ms), each the median of {TIMING_REPEATS} calls, then the median over seeds")
    print((1e3 * tm[[m for m in METHODS if m != "base"]]).round(3).to_string())
    ratio = df[df.method == "retrain"].set_index(["n_init", "n_new", "seed"]).time_s / df[df.method == "update"].set_index(["n_init", "n_new", "seed"]).time_s
    print("\nspeedup retrain/update (median over seeds)")
    print(ratio.groupby(["n_init", "n_new"]).median().round(1).to_string())
    sweep = gamma_sweep(ds, repeats=args.repeats)
    print("\nstep size γ at 100 init / 10 new, mean test accuracy (%):",
          "  ".join(f"{k}: {v:.2f}" for k, v in sweep.items()))
    lat = pd.DataFrame(latency_vs_flops(ds.num_classes))
    print("\nsingle-label update latency vs FLOPs (2D^2 + CD)")
    print(lat.round(2).to_string(index=False))
    lat.to_csv(args.out / "update_latency.csv", index=False)
    print(f"\ntotal benchmark time {time.perf_counter() - t_start:.1f}s; wrote {args.out}/update_vs_retrain.csv/.png")
    speedup = float(ratio.loc[(100, 10)].median())
    gap = 100 * float(acc.loc[(100, 10), "retrain"] - acc.loc[(100, 10), "update"])
    print(f"speedup_vs_retrain={speedup:.1f} acc_gap_pp={gap:.2f}")


if __name__ == "__main__":
    main()

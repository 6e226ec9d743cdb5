"""Update fidelity: does the closed-form update land where a retrain lands? Paired, several data sets.

For each data set × initial labels {10, 100, 1000} × new labels {1, 10, 50} × seed, the same random
initial/new points go to every method:

- ``update``: the posterior with λ₀ by cross-validation and the exact MAP head (the library's
  defaults) fitted on the initial labels, then ``update`` with the new ones using
  ``FIDELITY_OPTIONS`` (categorical curvature, γ = 1, 5 damped Newton steps; the runner's defaults).
  The update leaves the covariance downdate pending until the covariance is read; it is timed as
  called (mean and pending factor) and, separately, with ``.covariance`` read after it;
- ``exact``: the exact convex retrain of the same objective (same λ₀, L-BFGS to the gradient
  tolerance) on initial + new labels, warm-started from the base head (the strong baseline);
- ``paper``: the paper's recipe (200 epochs RAdam, from scratch) on initial + new labels;
- ``paper_update``: paper mode — a head trained with the paper's recipe on the initial labels,
  λ₀ = 1, gaussian curvature, γ = 10, one step — updated with the new labels.

Reports mean ± 95 % CI (t over seeds) of (retrain − update) in percentage points of test accuracy
against both retrains, update − base, and median times. Writes one CSV per data set and a plot of the
gaps. The LAST line is

    gap_exact_pp_max=<worst mean exact − update gap at 100/10 over data sets>
    speedup_vs_exact=<median exact-retrain time / update time at 100/10 on bbcnews>
    speedup_vs_paper=<median paper-retrain time / update time at 100/10 on bbcnews>

(on one line). Smoke run: ``--seeds 2 --datasets digits``; ``--summarize-only`` rebuilds the summary
from the CSVs already in ``--out`` (e.g. after running data sets in separate processes).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import pandas as pd
import torch
from fidelity_common import accuracy, load_split, t975

from bayesal import HeadConfig, LastLayerLaplace
from bayesal.laplace.head import fit_map_head, train_head
from bayesal.laplace.update import FIDELITY_OPTIONS

INIT_SIZES = (10, 100, 1000)
NEW_SIZES = (1, 10, 50)
DATASETS = ("bbcnews", "animals", "mnist5k", "digits")
def _timed(fn, repeats: int):
    """First result and the median wall time of ``repeats`` calls."""
    times, out = [], None
    for k in range(repeats):
        t0 = time.perf_counter()
        res = fn()
        times.append(time.perf_counter() - t0)
        out = res if k == 0 else out
    return out, statistics.median(times)


def run_dataset(name: str, seeds: int, repeats: int, out: Path) -> pd.DataFrame:
    x, y, xte, yte, c = load_split(name)
    rows = []
    path = out / f"update_vs_retrain_{name}.csv"
    for n_init in INIT_SIZES:
        for seed in range(seeds):
            perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
            init = perm[:n_init]
            t0 = time.perf_counter()
            base = LastLayerLaplace(**FIDELITY_OPTIONS, random_state=seed).fit(x[init], y[init], num_classes=c)
            t_fit = time.perf_counter() - t0
            lam = base.fitted_prior_precision
            gen = torch.Generator().manual_seed(seed)
            wp, bp = train_head(x[init], y[init], c, config=HeadConfig.paper(), generator=gen)
            paper_base = LastLayerLaplace(prior_precision=1.0, curvature="gaussian", gamma=10.0, steps=1).fit(
                x[init], y[init], weight=wp, bias=bp, num_classes=c)
            for n_new in NEW_SIZES:
                new = perm[n_init : n_init + n_new]
                both = torch.cat([init, new])
                upd, t_upd = _timed(lambda b=base, n=new: b.update(x[n], y[n]), repeats)
                # the update leaves the covariance downdate pending until Σ' is read: also time it formed
                _, t_upd_cov = _timed(lambda b=base, n=new: b.update(x[n], y[n]).covariance, repeats)
                pupd = paper_base.update(x[new], y[new])
                onehot = torch.nn.functional.one_hot(y[both], c).double()
                ex, t_ex = _timed(lambda i=both, t=onehot, lam=lam, b=base: fit_map_head(
                    x[i], t, lam, init=(b.mean, b.bias)), max(1, repeats // 2))
                (wr, br), t_pap = _timed(lambda i=both, s=seed: train_head(
                    x[i], y[i], c, config=HeadConfig.paper(), generator=torch.Generator().manual_seed(s)), 1)
                rows.append({
                    "dataset": name, "n_init": n_init, "n_new": n_new, "seed": seed, "prior_precision": lam,
                    "acc_base": accuracy(base.mean, base.bias, xte, yte),
                    "acc_update": accuracy(upd.mean, upd.bias, xte, yte),
                    "acc_exact": accuracy(ex.weight, ex.bias, xte, yte),
                    "acc_paper": accuracy(wr, br, xte, yte),
                    "acc_paper_base": accuracy(paper_base.mean, paper_base.bias, xte, yte),
                    "acc_paper_update": accuracy(pupd.mean, pupd.bias, xte, yte),
                    "t_update": t_upd, "t_update_cov": t_upd_cov, "t_exact": t_ex, "t_paper": t_pap, "t_fit_cv": t_fit,
                    "exact_iters": ex.n_iter,
                })
            pd.DataFrame(rows).to_csv(path, index=False)  # after every seed: a killed run keeps its rows
            print(f"{name} init={n_init} seed={seed} λ₀={lam:.3g} done", flush=True)
    return pd.DataFrame(rows)


def _ci(v: pd.Series) -> str:
    n = len(v)
    mean = 100 * v.mean()
    half = 100 * t975(n - 1) * v.std(ddof=1) / math.sqrt(n) if n > 1 else math.nan
    return f"{mean:+.2f} ± {half:.2f}"


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    df = df.assign(
        gap_exact=df.acc_exact - df.acc_update, gap_paper=df.acc_paper - df.acc_update,
        gain=df.acc_update - df.acc_base, gap_paper_mode=df.acc_paper - df.acc_paper_update,
    )
    out = []
    for (name, n_init, n_new), g in df.groupby(["dataset", "n_init", "n_new"]):
        out.append({
            "dataset": name, "init": n_init, "new": n_new, "seeds": len(g),
            "exact−update pp": _ci(g.gap_exact), "paper−update pp": _ci(g.gap_paper),
            "update−base pp": _ci(g.gain), "paper−paper-mode update pp": _ci(g.gap_paper_mode),
            "acc update %": round(100 * g.acc_update.mean(), 2), "acc exact %": round(100 * g.acc_exact.mean(), 2),
            "acc paper %": round(100 * g.acc_paper.mean(), 2),
            "t update ms": round(1e3 * g.t_update.median(), 3),
            "t update+Σ ms": round(1e3 * g.t_update_cov.median(), 3) if "t_update_cov" in g else math.nan,
            "t exact ms": round(1e3 * g.t_exact.median(), 1),
            "t paper ms": round(1e3 * g.t_paper.median(), 1),
            "×exact": round(float((g.t_exact / g.t_update).median()), 1),
            "×exact (Σ formed)": round(float((g.t_exact / g.t_update_cov).median()), 1) if "t_update_cov" in g
            else math.nan,
            "×paper": round(float((g.t_paper / g.t_update).median()), 1),
            "λ₀ median": float(g.prior_precision.median()),
        })
    return pd.DataFrame(out)


def plot(df: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(df.dataset))
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.8), squeeze=False)
    df = df.assign(gap_exact=100 * (df.acc_exact - df.acc_update), gap_paper=100 * (df.acc_paper - df.acc_update))
    for ax, name in zip(axes[0], names):
        sub = df[df.dataset == name]
        for k, n_init in enumerate(INIT_SIZES):
            g = sub[sub.n_init == n_init].groupby("n_new")
            ax.errorbar(g.gap_exact.mean().index, g.gap_exact.mean(), yerr=g.gap_exact.sem(), marker="o",
                        color=f"C{k}", label=f"{n_init} init, vs exact")
            ax.plot(g.gap_paper.mean().index, g.gap_paper.mean(), ls="--", marker="x", color=f"C{k}",
                    label=f"{n_init} init, vs paper")
        ax.axhline(0, color="k", lw=0.5)
        ax.set(title=name, xscale="log", xlabel="new labels", ylabel="retrain − update (pp)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5, help="timing repeats of the update (half for exact)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--summarize-only", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    frames = []
    for name in names:
        path = args.out / f"update_vs_retrain_{name}.csv"
        if args.summarize_only:
            if path.exists():
                frames.append(pd.read_csv(path))
            continue
        frames.append(run_dataset(name, args.seeds, args.repeats, args.out))
    df = pd.concat(frames, ignore_index=True)
    tab = summarize(df)
    pd.set_option("display.width", 250)
    print(tab.to_string(index=False))
    tab.to_csv(args.out / "update_vs_retrain_summary.csv", index=False)
    plot(df, args.out / "update_vs_retrain.png")
    at = df[(df.n_init == 100) & (df.n_new == 10)]
    gap = max(100 * float((g.acc_exact - g.acc_update).mean()) for _, g in at.groupby("dataset"))
    ref = at[at.dataset == "bbcnews"] if (at.dataset == "bbcnews").any() else at
    print(f"update options {FIDELITY_OPTIONS}, λ₀ by cross-validation; torch threads "
          f"{torch.get_num_threads()}; machine shared, absolute times noisy, ratios measured side by side")
    if "t_update_cov" in ref:
        print(f"with the covariance formed (update(...).covariance): speedup_vs_exact="
              f"{float((ref.t_exact / ref.t_update_cov).median()):.1f}")
    print(f"gap_exact_pp_max={gap:.2f} speedup_vs_exact={float((ref.t_exact / ref.t_update).median()):.1f} "
          f"speedup_vs_paper={float((ref.t_paper / ref.t_update).median()):.1f}")


if __name__ == "__main__":
    main()

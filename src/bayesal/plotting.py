"""Learning curves (mean ± standard error over seeds) and area-under-the-learning-curve tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .metrics import aulc

__all__ = ["curve_summary", "aulc_table", "plot_learning_curves"]

REQUIRED = ("strategy", "seed", "num_labels")


def _check(df: pd.DataFrame, metric: str) -> None:
    missing = [c for c in (*REQUIRED, metric) if c not in df.columns]
    if missing:
        raise ValueError(f"results lack column(s) {missing}; columns present: {list(df.columns)}")
    if df.empty:
        raise ValueError("results are empty")


def curve_summary(df: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """Mean, standard error and seed count of ``metric`` per (dataset, strategy, num_labels)."""
    _check(df, metric)
    keys = [k for k in ("dataset", "strategy") if k in df.columns] + ["num_labels"]
    g = df.groupby(keys)[metric]
    out = g.agg(["mean", "std", "count"]).reset_index()
    out["sem"] = out["std"].fillna(0.0) / np.sqrt(out["count"])
    return out


def aulc_table(df: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """AULC per strategy: computed per seed, then mean ± standard error over seeds, best first."""
    _check(df, metric)
    keys = [k for k in ("dataset", "strategy") if k in df.columns]
    per_seed = (
        df.sort_values("num_labels").groupby(keys + ["seed"])
        .apply(lambda s: aulc(s["num_labels"], s[metric]), include_groups=False)
        .rename("aulc").reset_index()
    )
    tab = per_seed.groupby(keys)["aulc"].agg(["mean", "std", "count"]).reset_index()
    tab["sem"] = tab["std"].fillna(0.0) / np.sqrt(tab["count"])
    tab = tab.rename(columns={"mean": f"aulc_{metric}", "count": "seeds"}).drop(columns="std")
    return tab.sort_values(f"aulc_{metric}", ascending=metric in ("nll", "brier", "ece")).reset_index(drop=True)


def plot_learning_curves(df: pd.DataFrame, out: str | Path, metric: str = "accuracy", title: str | None = None) -> Path:
    """Draw one line per strategy with a ± standard-error band; one panel per dataset. Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summ = curve_summary(df, metric)
    datasets = sorted(summ["dataset"].unique()) if "dataset" in summ.columns else [None]
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.5), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        part = summ if ds is None else summ[summ["dataset"] == ds]
        for strat, s in part.groupby("strategy"):
            ax.plot(s["num_labels"], s["mean"], marker=".", label=f"{strat} (n={int(s['count'].max())})")
            ax.fill_between(s["num_labels"], s["mean"] - s["sem"], s["mean"] + s["sem"], alpha=0.2)
        ax.set(xlabel="number of labels", ylabel=metric, title=title or (ds or ""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out

"""Learning curves (mean ± standard error over seeds) and area-under-the-learning-curve tables."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bayesal.exceptions import ResultsFileError

from .metrics import aulc

__all__ = ["curve_summary", "aulc_table", "plot_learning_curves"]

REQUIRED = ("strategy", "seed", "num_labels")


def _check(df: pd.DataFrame, metric: str) -> None:
    missing = [c for c in (*REQUIRED, metric) if c not in df.columns]
    if missing:
        raise ResultsFileError(f"results lack column(s) {missing}; columns present: {list(df.columns)}")
    if df.empty:
        raise ResultsFileError("results are empty")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def _config_labels(configs: list[str], skip: tuple[str, ...] = ()) -> dict[str, str]:
    """Short labels naming only the settings that differ between config strings ("" if none differ)."""
    try:
        parsed = {c: _flatten(ast.literal_eval(c)) for c in configs}
    except (ValueError, SyntaxError, TypeError, AttributeError):  # not a dict repr: number them
        return {c: f"config {i + 1}" for i, c in enumerate(configs)} if len(configs) > 1 else {c: "" for c in configs}
    keys = sorted({k for p in parsed.values() for k in p} - set(skip))
    varying = [k for k in keys if len({repr(p.get(k)) for p in parsed.values()}) > 1]
    return {c: ", ".join(f"{k}={p.get(k)}" for k in varying) for c, p in parsed.items()}


def _with_setting(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Group keys beyond dataset/strategy: batch_size and, where configs differ otherwise, a short
    ``setting`` label, so runs with other batch sizes or configs are never merged into one curve."""
    keys = ["batch_size"] if "batch_size" in df.columns else []
    if "config" in df.columns:
        skip = ("batch_size",) if keys else ()
        labels = _config_labels([str(c) for c in df["config"].dropna().unique()], skip)
        if any(labels.values()):
            df = df.assign(setting=df["config"].map(lambda c: labels.get(str(c), "") if pd.notna(c) else ""))
            keys.append("setting")
    return df, keys


RUN_KEYS = ("dataset", "data_fingerprint", "strategy", "seed", "cycle", "batch_size", "config")


def _distinct_data(df: pd.DataFrame) -> pd.DataFrame:
    """Runs on different data under one name (a file changed between runs) get the name plus the start
    of their data fingerprint, so their curves are never pooled."""
    if "data_fingerprint" not in df.columns or "dataset" not in df.columns:
        return df
    n_fp = df.groupby("dataset", dropna=False)["data_fingerprint"].transform("nunique")
    if not bool((n_fp > 1).any()):
        return df
    label = df["dataset"].astype(str) + " [data " + df["data_fingerprint"].astype(str).str[:8] + "]"
    return df.assign(dataset=df["dataset"].where(n_fp <= 1, label))


def _dedupe(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, strategy, seed, cycle, batch size, config): a run appended twice to the same
    file must not count as two seeds (it would shrink the standard error by √2)."""
    keys = [k for k in RUN_KEYS if k in df.columns]
    return df.drop_duplicates(keys, keep="last") if "cycle" in keys else df


def _group_keys(df: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    df, extra = _with_setting(_distinct_data(_dedupe(df)))
    return df, [k for k in ("dataset", "strategy") if k in df.columns] + extra


def curve_summary(df: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """Mean, standard error and seed count of ``metric`` per (dataset, strategy, batch_size[, setting],
    num_labels); ``setting`` names the config fields that differ, present only when some do."""
    _check(df, metric)
    df, keys = _group_keys(df)
    keys = keys + ["num_labels"]
    g = df.groupby(keys, dropna=False)[metric]
    out = g.agg(["mean", "std", "count"]).reset_index()
    out["sem"] = out["std"].fillna(0.0) / np.sqrt(out["count"])
    return out


def aulc_table(df: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """AULC per strategy (and batch size / setting): computed per seed, then mean ± standard error over
    seeds, best first. ``batch_size`` is shown only when the results hold more than one."""
    _check(df, metric)
    df, keys = _group_keys(df)
    per_seed = (
        df.sort_values("num_labels").groupby(keys + ["seed"], dropna=False)
        .apply(lambda s: aulc(s["num_labels"], s[metric]), include_groups=False)
        .rename("aulc").reset_index()
    )
    tab = per_seed.groupby(keys, dropna=False)["aulc"].agg(["mean", "std", "count"]).reset_index()
    if "batch_size" in tab.columns and tab["batch_size"].nunique(dropna=False) < 2:
        tab = tab.drop(columns="batch_size")
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
        keys = [k for k in ("strategy", "batch_size", "setting") if k in part.columns]
        many_b = "batch_size" in part.columns and summ["batch_size"].nunique(dropna=False) > 1
        for key, s in part.groupby(keys, dropna=False):
            strat, rest = key[0], dict(zip(keys[1:], key[1:]))
            extra = f", b={rest['batch_size']}" if many_b else ""
            extra += f", {rest['setting']}" if rest.get("setting") else ""
            ax.plot(s["num_labels"], s["mean"], marker=".", label=f"{strat}{extra} (n={int(s['count'].max())})")
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

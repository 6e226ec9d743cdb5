"""Finding label errors: bayesal's leave-one-out ranking against cleanlab on flipped labels.

Cells: built-in data set (``--datasets``; train and test splits pooled) × labeled-set size (``--sizes``,
500 and 2,000; a size above the data set's rows is skipped) × noise (``--noises``): ``uniform10`` and
``uniform20`` flip 10 % / 20 % of the labels, each to another class drawn at random; ``classcond20``
flips 20 %, each class to one other class fixed per seed (a random derangement of the classes: the
confusions of a tired annotator). Paired seeds (``--seeds``, default 10): one seed draws the labeled
rows and the flips, and both methods rank the same noisy labels.

- **bayesal**: the session's posterior on the noisy labels (``LastLayerLaplace`` with its defaults, λ₀
  and the spread by cross-validation), then every label's leave-one-out doubt
  (:func:`bayesal.laplace.leave_one_out`: under the posterior without that label, the likeliest other
  class's probability ``a`` against the given label's ``g``, ``a / (a + g)``; the column ``bayesal_1mg``
  ranks by ``1 − g`` instead, the complement of cleanlab's self-confidence). Time: the ranking given the posterior — in a session the posterior is there already, kept
  current by the updates — and, separately, the posterior's fit plus the ranking.
- **cleanlab** 2.9: out-of-sample probabilities from 5-fold cross-validation (stratified, shuffled by
  the seed) of scikit-learn's ``LogisticRegression(max_iter=1000)`` on the same features, ranked by
  self-confidence (``cleanlab.rank.get_label_quality_scores(method="self_confidence")``), and the set
  ``cleanlab.filter.find_label_issues`` flags (its precision and recall are printed); the column
  ``cleanlab_pair`` ranks the same out-of-sample probabilities by bayesal's ``a / (a + g)``. Time: the five
  fits plus cleanlab's ranking and filter. cleanlab is a development dependency only
  (``pip install "cleanlab==2.9.*"``); without it the cleanlab columns are skipped with a message.

Scores per cell: AUROC of each ranking for "this label was flipped", and precision@k with ``k`` the
number of flipped labels. A refit check (``--refit-points``, first seed, ``uniform10``) compares the
leave-one-out probability of the given label, and the doubt, with those of an exact refit of the
posterior without the point (same λ₀ and spread).

Re-ranking at 10,000 labels (``--rerank-dataset``, default rotten_tomatoes, or the largest data set
run): the posterior on 10,000 noisy labels, then for each of ``--rerank-answers`` new answers the update
and the re-ranking of every label (:class:`bayesal.laplace.LeaveOneOutCache`: the rank-1 step refreshes
the cached logits and variances in ``O(N·D)``); the median milliseconds.

The LAST line is

    auroc_vs_cleanlab_min=<min over cells of the paired mean (bayesal AUROC − cleanlab AUROC)>
    speedup_vs_cleanlab=<median over cells of cleanlab's time / bayesal's ranking time>
    rerank_ms_10k=<median ms to absorb one answer and re-rank 10,000 labels>

(on one line; ``nan`` for a part not run). Smoke run:
``python benchmarks/label_errors.py --datasets digits --sizes 500 --seeds 2 --refit-points 5``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from fidelity_common import t975

from bayesal import LastLayerLaplace
from bayesal.data import load_dataset
from bayesal.laplace import LeaveOneOutCache, leave_one_out
from bayesal.laplace.loo import pairwise_doubt

DATASETS = ("bbcnews", "animals", "mnist5k", "digits", "fashion_mnist", "rotten_tomatoes")
SIZES = (500, 2000)
NOISES = ("uniform10", "uniform20", "classcond20")
RERANK_LABELS = 10_000


def load_pool(name: str) -> tuple[torch.Tensor, np.ndarray, int]:
    """Train and test rows of a built-in data set, pooled: ``(x float64, y, C)``."""
    ds = load_dataset(name)
    x = np.concatenate([ds.train_features, ds.test_features]) if ds.test_features is not None else ds.train_features
    y = np.concatenate([ds.train_labels, ds.test_labels]) if ds.test_labels is not None else ds.train_labels
    return torch.as_tensor(np.asarray(x), dtype=torch.float64), np.asarray(y, dtype=np.int64), ds.num_classes


def corrupt(y: np.ndarray, c: int, noise: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Noisy labels and the flipped mask: ``uniformP`` flips P % to a random other class, ``classcondP``
    flips P % along a random derangement of the classes."""
    kind, share = noise.rstrip("0123456789"), int(noise[len(noise.rstrip("0123456789")):]) / 100
    flipped = np.zeros(len(y), dtype=bool)
    flipped[rng.choice(len(y), size=int(round(share * len(y))), replace=False)] = True
    noisy = y.copy()
    if kind == "uniform":
        noisy[flipped] = (y[flipped] + rng.integers(1, c, size=int(flipped.sum()))) % c
    elif kind == "classcond":
        perm = rng.permutation(c)
        target = np.empty(c, dtype=np.int64)
        target[perm] = np.roll(perm, 1)  # a cycle through all classes: no class maps to itself
        noisy[flipped] = target[y[flipped]]
    else:
        raise SystemExit(f"unknown noise {noise!r}; choose uniformP or classcondP (P in percent)")
    return noisy, flipped


def precision_at_k(flipped: np.ndarray, score: np.ndarray) -> float:
    k = int(flipped.sum())
    return float(flipped[np.argsort(-score, kind="stable")[:k]].mean()) if k else math.nan


def bayesal_scores(x: torch.Tensor, noisy: np.ndarray, c: int,
                   seed: int) -> tuple[np.ndarray, np.ndarray, float, float, LastLayerLaplace]:
    """Leave-one-out doubt ``(n,)``, ``1 −`` the given label's leave-one-out probability ``(n,)``, ranking
    seconds, fit seconds and the posterior."""
    y = torch.from_numpy(noisy)
    t0 = time.perf_counter()
    post = LastLayerLaplace(random_state=seed).fit(x, y, num_classes=c)
    t1 = time.perf_counter()
    loo = leave_one_out(post, x, y)
    doubt = loo.doubt.numpy()
    seconds = time.perf_counter() - t1
    return doubt, 1.0 - loo.given.numpy(), seconds, t1 - t0, post


def cleanlab_scores(x: np.ndarray, noisy: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """Issue scores ``1 − self-confidence (n,)``, the flagged mask, the seconds (5 fits + cleanlab) and the
    out-of-sample probabilities ``(n, C)``."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # too few members of a class for 5 folds, slow convergence: both recorded as is
        folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
        probs = cross_val_predict(LogisticRegression(max_iter=1000), x, noisy, cv=folds, method="predict_proba")
        quality = get_label_quality_scores(noisy, probs, method="self_confidence")
        issues = find_label_issues(noisy, probs, return_indices_ranked_by="self_confidence")
    seconds = time.perf_counter() - t0
    flagged = np.zeros(len(noisy), dtype=bool)
    flagged[issues] = True
    return 1.0 - quality, flagged, seconds, probs


def cached_cleanlab(folder: str, key: str, x: np.ndarray, noisy: np.ndarray,
                    seed: int) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """:func:`cleanlab_scores`, kept in ``folder/key.npz`` (with its measured seconds) when ``folder`` is set:
    cleanlab's side of a cell depends only on the data set, the noisy labels and the seed, so a rerun of
    the grid (more seeds, another bayesal) reuses it."""
    path = Path(folder) / f"{key}.npz" if folder else None
    if path is not None and path.exists():
        with np.load(path) as f:
            if np.array_equal(f["noisy"], noisy):
                return f["score"], f["flagged"], float(f["seconds"]), f["probs"]
    score, flagged, seconds, probs = cleanlab_scores(x, noisy, seed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, score=score, flagged=flagged, seconds=seconds, probs=probs, noisy=noisy)
    return score, flagged, seconds, probs


def refit_error(x: torch.Tensor, noisy: np.ndarray, c: int, post: LastLayerLaplace, points: int,
                seed: int) -> tuple[float, float]:
    """Mean |leave-one-out − exact refit without the point| of the given label's probability and of the
    doubt, over ``points`` random labeled rows (the refit: the same λ₀ and spread, the exact MAP head)."""
    y = torch.from_numpy(noisy)
    rows = np.random.default_rng(seed).choice(len(noisy), size=min(points, len(noisy)), replace=False)
    loo = leave_one_out(post, x[rows], y[rows])
    ref = []
    for i in rows:
        keep = torch.ones(len(noisy), dtype=torch.bool)
        keep[int(i)] = False
        without = LastLayerLaplace(prior_precision=post.fitted_prior_precision, spread=post.fitted_spread)
        without.fit(x[keep], y[keep], num_classes=c)
        ref.append(without.predict_proba(x[int(i) : int(i) + 1])[0])
    probs = torch.stack(ref)
    given = probs[torch.arange(len(rows)), y[rows]]
    return (float((loo.given - given).abs().mean()),
            float((loo.doubt - pairwise_doubt(probs, y[rows])).abs().mean()))


def run_cells(args: argparse.Namespace, have_cleanlab: bool) -> pd.DataFrame:
    from sklearn.metrics import roc_auc_score

    rows = []
    for name in args.datasets.split(","):
        x_all, y_all, c = load_pool(name)
        for n in (int(s) for s in args.sizes.split(",")):
            if n > len(y_all):
                print(f"{name}: {len(y_all)} rows, size {n} skipped", flush=True)
                continue
            for noise in args.noises.split(","):
                for seed in range(args.seeds):
                    rng = np.random.default_rng([seed, n, len(y_all)])
                    idx = rng.choice(len(y_all), size=n, replace=False)
                    x, y = x_all[torch.from_numpy(idx)], y_all[idx]
                    noisy, flipped = corrupt(y, c, noise, rng)
                    doubt, one_minus_given, t_rank, t_fit, post = bayesal_scores(x, noisy, c, seed)
                    row = {"dataset": name, "n": n, "noise": noise, "seed": seed, "flipped": int(flipped.sum()),
                           "bayesal_auroc": roc_auc_score(flipped, doubt),
                           "bayesal_p_at_k": precision_at_k(flipped, doubt),
                           "bayesal_1mg_auroc": roc_auc_score(flipped, one_minus_given),
                           "bayesal_rank_s": t_rank, "bayesal_fit_s": t_fit,
                           "lambda0_over_scale": post.fitted_prior_precision / float(x.square().sum(1).mean())}
                    if have_cleanlab:
                        key = f"{name}_{len(y_all)}_{n}_{noise}_{seed}"
                        score, flagged, t_cl, probs = cached_cleanlab(args.cleanlab_cache, key, x.numpy(), noisy, seed)
                        pair = pairwise_doubt(torch.from_numpy(probs), torch.from_numpy(noisy)).numpy()
                        row.update(cleanlab_auroc=roc_auc_score(flipped, score),
                                   cleanlab_pair_auroc=roc_auc_score(flipped, pair),
                                   cleanlab_p_at_k=precision_at_k(flipped, score), cleanlab_s=t_cl,
                                   cleanlab_flagged=int(flagged.sum()),
                                   cleanlab_flag_precision=float(flipped[flagged].mean()) if flagged.any() else math.nan,
                                   cleanlab_flag_recall=float(flagged[flipped].mean()) if flipped.any() else math.nan)
                    if seed == 0 and noise == "uniform10" and args.refit_points > 0:
                        row["refit_abs_err"], row["refit_doubt_abs_err"] = refit_error(x, noisy, c, post,
                                                                                     args.refit_points, seed)
                    rows.append(row)
                    print(f"{name} n={n} {noise} seed={seed}: bayesal AUROC {row['bayesal_auroc']:.3f} "
                          f"({1e3 * t_rank:.1f} ms + fit {t_fit:.2f} s)"
                          + (f", cleanlab {row['cleanlab_auroc']:.3f} ({row['cleanlab_s']:.2f} s)" if have_cleanlab else ""),
                          flush=True)
    return pd.DataFrame(rows)


def rerank_ms(name: str, answers: int, seed: int = 0) -> float:
    """Median ms to absorb one new answer and re-rank every label, at 10,000 labels of ``name``."""
    x_all, y_all, c = load_pool(name)
    if len(y_all) < RERANK_LABELS + answers:
        print(f"rerank: {name} has {len(y_all)} rows, fewer than {RERANK_LABELS} + {answers}; skipped", flush=True)
        return math.nan
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(y_all), size=RERANK_LABELS + answers, replace=False)
    x, y = x_all[torch.from_numpy(idx)], y_all[idx]
    noisy, _ = corrupt(y, c, "uniform10", rng)
    yt = torch.from_numpy(noisy)
    t0 = time.perf_counter()
    post = LastLayerLaplace(random_state=seed).fit(x[:RERANK_LABELS], yt[:RERANK_LABELS], num_classes=c)
    cache = LeaveOneOutCache(post, x[:RERANK_LABELS], yt[:RERANK_LABELS])
    print(f"rerank: {name}, {RERANK_LABELS} labels, D={x.shape[1]}: fit and first ranking "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    times = []
    for k in range(RERANK_LABELS, RERANK_LABELS + answers):
        t = time.perf_counter()
        cache.add(x[k], int(noisy[k]))
        order = torch.argsort(cache.result().doubt, descending=True)
        times.append(1e3 * (time.perf_counter() - t))
    assert order.numel() == RERANK_LABELS + answers
    print("rerank ms per answer: " + " ".join(f"{v:.1f}" for v in times), flush=True)
    return statistics.median(times)


def summarize(df: pd.DataFrame, have_cleanlab: bool) -> tuple[float, float]:
    keys = ["dataset", "n", "noise"]
    cols = ["bayesal_auroc", "bayesal_p_at_k", "bayesal_1mg_auroc", "lambda0_over_scale", "bayesal_rank_s",
            "bayesal_fit_s"]
    if have_cleanlab:
        df = df.assign(diff=df.bayesal_auroc - df.cleanlab_auroc, speedup=df.cleanlab_s / df.bayesal_rank_s,
                       speedup_incl_fit=df.cleanlab_s / (df.bayesal_rank_s + df.bayesal_fit_s))
        cols += ["cleanlab_auroc", "cleanlab_p_at_k", "cleanlab_pair_auroc", "cleanlab_s", "cleanlab_flag_precision", "cleanlab_flag_recall",
                 "diff", "speedup", "speedup_incl_fit"]
    g = df.groupby(keys)
    tab = g[cols].mean()
    if have_cleanlab:
        se = g["diff"].std(ddof=1) / np.sqrt(g["diff"].count())
        tab["diff_ci95"] = [t975(int(k) - 1) * s for k, s in zip(g["diff"].count(), se)]
    pd.set_option("display.width", 250)
    print("\nper cell, paired means over seeds (times in seconds):")
    print(tab.round(4).to_string())
    if "refit_abs_err" in df:
        err = df.dropna(subset=["refit_abs_err"]).groupby(["dataset", "n"])[["refit_abs_err",
                                                                               "refit_doubt_abs_err"]].mean()
        print("\nleave-one-out vs an exact refit without the point, mean |Δ| of the given label's probability"
              " and of the doubt:")
        print(err.round(4).to_string())
    if not have_cleanlab:
        return math.nan, math.nan
    print(f"\nspeedup including bayesal's posterior fit (median over cells): {tab['speedup_incl_fit'].median():.1f}x")
    return float(tab["diff"].min()), float(tab["speedup"].median())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)))
    ap.add_argument("--noises", default=",".join(NOISES))
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--refit-points", type=int, default=20, help="refit check: points per (data set, size); 0 = none")
    ap.add_argument("--rerank-dataset", default="rotten_tomatoes", help="data set of the 10,000-label re-ranking; '' = skip")
    ap.add_argument("--rerank-answers", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cleanlab-cache", default="", help="folder keeping cleanlab's probabilities and seconds per "
                    "cell and seed, reused by later runs ('' = none)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import cleanlab

        have_cleanlab = True
        print(f"cleanlab {cleanlab.__version__}", flush=True)
    except ImportError:
        have_cleanlab = False
        print('cleanlab is not installed (pip install "cleanlab==2.9.*"): the cleanlab columns are skipped', flush=True)
    df = run_cells(args, have_cleanlab)
    auroc_min, speedup = summarize(df, have_cleanlab) if len(df) else (math.nan, math.nan)
    rerank = rerank_ms(args.rerank_dataset, args.rerank_answers) if args.rerank_dataset else math.nan
    print(f"torch threads {torch.get_num_threads()}; bayesal defaults (λ₀ and spread by cross-validation)")
    print(f"auroc_vs_cleanlab_min={auroc_min:.4f} speedup_vs_cleanlab={speedup:.1f} rerank_ms_10k={rerank:.1f}")


if __name__ == "__main__":
    main()

"""A stop you can trust: the session's accuracy interval and stop recommendation in oracle labeling runs.

Each run labels a built-in data set's pool with oracle answers the way a session does — batches of
``--batch`` labels picked by margin (top-b) or seq-margin (the oracle sequential margin), the posterior
absorbing each label by the closed-form update and refit from scratch at 10, 20, 40, … labels (the
sessions' doubling schedule) — with the audit stream on (each label, with probability
``--audit-rate``, is an item drawn uniformly at random from the unlabeled pool, predicted before its
label is absorbed). Every ``--batch`` labels it records:

* the true accuracy on the unlabeled pool, the session's 90 % interval of it
  (:func:`bayesal.labeling.signals.accuracy_interval`: prediction-powered with the audit labels, the
  hull of the intervals from the predictions made when they were drawn and from the current
  posterior's leave-one-out ones, as ``Session.estimate`` does; for comparison each of the two alone —
  "logged" and "loo" — and the model-based interval) and the test accuracy;
* the stopping signals: the expected gain of the next 50 labels as the earlier rule measured it
  (:func:`~bayesal.labeling.signals.prediction_gain` over the last 50 labels) and the
  stabilizing-predictions statistic (Bloodgood & Vijay-Shanker 2009: Cohen's κ of the predictions on a
  fixed random stop set between successive models);
* the trace the stop rules are evaluated on: the current predictive on the reference subset against
  the predictions of every earlier record (the gain as the current model sees it, the earlier model's
  view of it, the share of agreeing predictions and κ), and the model's own expected accuracy.

Stops compared with the label count ``n99`` at which the test accuracy first reaches 99 % of its final
value (at the budget): the session's recommended stop (the first count at which its expected gain of the
next 50 labels — the share of the reference predictions changed per label since the model at half the
labels, times 50, :func:`expected_gain` — is below ``--stop-gain``), the earlier rule (the gain of the
last 50 labels as the current model sees it below 0.005), stabilizing predictions (κ ≥ 0.99 for 3
successive models) and fixed budgets. A rule that never fires stops at the budget.

The runs, with their traces, are saved to ``--out`` (JSON lines); ``--rules-only TRACE...`` applies
the stop rules to saved runs without labeling anything (seconds), e.g. to try a threshold.

Prints one row per run, then per data set: coverage of the audit interval (and of the model-based
one) over all measured counts, the mean relative stop errors ``|stop − n99| / n99``. The LAST line is

    coverage_min=<smallest per-data-set coverage> stop_within_20pct=<share of runs within ±20 %>
    stop_err_vs_sp=<mean relative error of the recommended stop / that of stabilizing predictions>

Usage: python benchmarks/stopping.py [--datasets bbcnews,animals,mnist5k,digits,rotten_tomatoes]
[--strategies margin,seq-margin] [--seeds 10] [--first-seed 0] [--budget 1000] [--audit-rate 0.1]
[--stop-gain 0.02] [--out benchmarks/out/stopping.jsonl] [--rules-only TRACE...]
(smoke: ``--datasets digits --strategies margin --seeds 1 --budget 200``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from bayesal.data import load_dataset
from bayesal.labeling.policy import is_doubling_point
from bayesal.labeling.replay import PosteriorReplay
from bayesal.labeling.signals import (
    DEFAULT_STOP_GAIN,
    GAIN_HORIZON,
    GAIN_WINDOW,
    accuracy_interval,
    half_point,
    prediction_gain,
    stop_recommended,
)
from bayesal.laplace import PosteriorOptions, leave_one_out
from bayesal.strategies import LabeledSet, make_strategy, select
from bayesal.utils import derive_seed

DATASETS = "bbcnews,animals,mnist5k,digits,rotten_tomatoes"
SP_KAPPA, SP_WINDOW = 0.99, 3  # stabilizing predictions: κ ≥ 0.99 for 3 successive models
GAIN50_STOP = 0.005  # the earlier rule, for comparison
STOP_SET = 2000  # stop set / reference subset size


def cohen_kappa(a: torch.Tensor, b: torch.Tensor, num_classes: int) -> float:
    """Cohen's κ of two labelings ``(R,)``."""
    po = float((a == b).double().mean())
    pa = torch.bincount(a, minlength=num_classes).double() / a.numel()
    pb = torch.bincount(b, minlength=num_classes).double() / b.numel()
    pe = float((pa * pb).sum())
    return 1.0 if pe >= 1.0 else (po - pe) / (1.0 - pe)


def run(ds, strategy_name: str, seed: int, *, budget: int, batch: int, audit_rate: float,
        candidate_size: int = 1000) -> list[dict]:
    """One oracle labeling run; a record per ``batch`` labels."""
    x = torch.as_tensor(np.asarray(ds.train_features), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(ds.train_labels), dtype=torch.long)
    xt = torch.as_tensor(np.asarray(ds.test_features), dtype=torch.float64)
    yt = torch.as_tensor(np.asarray(ds.test_labels), dtype=torch.long)
    n, c = x.shape[0], len(ds.class_names)
    budget = min(budget, n - batch)
    replay = PosteriorReplay(x, c, seed=seed, options=PosteriorOptions())
    strategy = make_strategy(strategy_name)
    gen = torch.Generator().manual_seed(derive_seed(seed, "stopping", strategy_name))
    ref = torch.randperm(n, generator=gen)[: min(n, STOP_SET)]
    post = replay.prior()
    labeled: list[int] = []
    audits: list[tuple[int, float]] = []  # (correct, confidence) of each audit label, out of sample
    audit_idx: list[int] = []  # their pool indices
    preds: dict[int, torch.Tensor] = {}
    probs_ref: dict[int, torch.Tensor] = {}  # the predictive on the reference subset at each count
    rows: list[dict] = []
    while len(labeled) < budget:
        avail = torch.ones(n, dtype=torch.bool)
        avail[labeled] = False
        k = min(batch, budget - len(labeled))
        if len(set(y[labeled].tolist())) < 2:  # the cold start: random, as a session's
            picks = torch.nonzero(avail).flatten()[torch.randperm(int(avail.sum()), generator=gen)[:k]].tolist()
        else:
            n_audit = int((torch.rand(k, generator=gen) < audit_rate).sum())
            picks = []
            if n_audit:
                cand = torch.nonzero(avail).flatten()
                picks = cand[torch.randperm(cand.numel(), generator=gen)[:n_audit]].tolist()
                p = post.predict_proba(x[picks])
                conf, pred = p.max(1)
                audits += [(int(pred[j] == y[i]), float(conf[j])) for j, i in enumerate(picks)]
                audit_idx += [int(i) for i in picks]
                avail[picks] = False
            if k > n_audit:
                lab = LabeledSet(features=x[labeled], labels=y[labeled])
                more = select(strategy, post.copy(), x, avail, lab, k - n_audit, gen,
                              candidate_size=candidate_size, pool_labels=y)
                picks += more.tolist()
        for i in picks:
            labeled.append(int(i))
            m = len(labeled)
            if is_doubling_point(m, 10) and len(set(y[labeled].tolist())) >= 2:
                post = replay.fit(dict(zip(labeled, y[labeled].tolist(), strict=True)), m)
            else:
                post = replay.posteriors.update(post, x[i : i + 1], y[i : i + 1])
        m = len(labeled)
        rest = torch.ones(n, dtype=torch.bool)
        rest[labeled] = False
        p_rest = post.predict_proba(x[rest])
        conf, pred = p_rest.max(1)
        true_acc = float((pred == y[rest]).double().mean())
        test_acc = float((post.predict_proba(xt).argmax(1) == yt).double().mean())
        a = torch.tensor(audits, dtype=torch.float64).reshape(-1, 2)
        stale = accuracy_interval(conf, a[:, 0], a[:, 1])  # the predictions logged when the audits were drawn
        model = accuracy_interval(conf)
        if len(audit_idx) >= 2:  # the session's: with the current model's leave-one-out predictions too
            ai = audit_idx
            lc, lp = leave_one_out(post, x[ai], y[ai]).probs.max(1)
            loo = accuracy_interval(conf, (lp == y[ai]).double(), lc)
            est = accuracy_interval(conf, torch.stack([(lp == y[ai]).double(), a[:, 0]], 1),
                                    torch.stack([lc, a[:, 1]], 1))
        else:
            est = loo = model
        p_ref = post.predict_proba(x[ref])
        preds[m] = p_ref.argmax(1)
        probs_ref[m] = p_ref.float()
        back = [k2 for k2 in preds if k2 <= m - GAIN_WINDOW]
        gain = (prediction_gain(p_ref, preds[back[-1]]) * GAIN_HORIZON / (m - back[-1])) if back else math.nan
        prev = [k2 for k2 in preds if k2 < m]
        kappa = cohen_kappa(preds[m], preds[prev[-1]], c) if prev else math.nan
        # the trace for offline rules: the current model against every earlier one on the reference subset
        trace = dict(prev_n=prev, gain_vs=[prediction_gain(p_ref, preds[k2]) for k2 in prev],
                     # the earlier model's view of the same change (≤ 0)
                     gain_old_vs=[-prediction_gain(probs_ref[k2].double(), preds[m]) for k2 in prev],
                     agree_vs=[float((preds[m] == preds[k2]).double().mean()) for k2 in prev],
                     kappa_vs=[cohen_kappa(preds[m], preds[k2], c) for k2 in prev],
                     ea_ref=float(p_ref.max(1).values.mean()),
                     n_audit_correct_logged=float(a[:, 0].sum()) if len(audits) else 0.0)
        rows.append(dict(n=m, n_audit=len(audits), true_acc=true_acc, test_acc=test_acc, est=est.accuracy,
                         low=est.low, high=est.high, method=est.method, model_low=model.low, model_high=model.high,
                         model_acc=model.accuracy, gain50=gain, kappa=kappa, stale_low=stale.low,
                         stale_high=stale.high, loo_low=loo.low, loo_high=loo.high, **trace))
    return rows


def expected_gain(row: dict) -> float:
    """The session's expected gain of the next 50 labels at this row: the share of the reference
    predictions changed since the point at half the labels (:func:`~bayesal.labeling.signals.half_point`),
    per label, times 50; NaN before 50 labels."""
    low, high = half_point(row["n"])
    back = [j for j, m in enumerate(row["prev_n"]) if low <= m <= high]
    if row["n"] < GAIN_WINDOW or not back:
        return math.nan
    j = back[-1]
    return (1.0 - row["agree_vs"][j]) / (row["n"] - row["prev_n"][j]) * GAIN_HORIZON


def stops(rows: list[dict], stop_gain: float) -> dict[str, float]:
    """The label counts at which each rule stops, and ``n99``."""
    ns = [r["n"] for r in rows]
    final = rows[-1]["test_acc"]
    n99 = next(r["n"] for r in rows if r["test_acc"] >= 0.99 * final)
    ours = next((r["n"] for r in rows if stop_recommended(expected_gain(r), stop_gain)), ns[-1])
    # the earlier rule: the gain of the last 50 labels as the current model sees it, below 0.005
    gain50 = next((r["n"] for r in rows if r["gain50"] < GAIN50_STOP), ns[-1])
    sp, run_len = ns[-1], 0
    for r in rows:
        run_len = run_len + 1 if r["kappa"] >= SP_KAPPA else 0
        if run_len >= SP_WINDOW:
            sp = r["n"]
            break
    return {"n99": n99, "ours": ours, "sp": sp, "gain50": gain50}


def summarize(records: list[dict], stop_gain: float, fixed: list[int]) -> None:
    """Per-run lines, the per-data-set table and the LAST line, from the runs' records (with their rows)."""
    cover: dict[str, list[float]] = {}
    errs: dict[str, list[tuple[float, ...]]] = {}
    within: list[bool] = []
    within_sp: dict[str, list[bool]] = {}
    within_ours: dict[str, list[bool]] = {}
    for rec in records:
        name, rows = rec["dataset"], rec["rows"]
        s = stops(rows, stop_gain)
        cov = float(np.mean([r["low"] <= r["true_acc"] <= r["high"] for r in rows]))
        cover.setdefault(name, []).append(cov)
        rel = {k: abs(s[k] - s["n99"]) / s["n99"] for k in ("ours", "sp", "gain50")}
        rel_fixed = [abs(min(b, rows[-1]["n"]) - s["n99"]) / s["n99"] for b in fixed]
        errs.setdefault(name, []).append((rel["ours"], rel["sp"], rel["gain50"], *rel_fixed))
        within.append(rel["ours"] <= 0.2)
        within_sp.setdefault(name, []).append(rel["sp"] <= 0.2)
        within_ours.setdefault(name, []).append(rel["ours"] <= 0.2)
        print(f"{name:16s} {rec['strategy']:10s} seed={rec['seed']} n99={s['n99']:4d} stop={s['ours']:4d} "
              f"sp={s['sp']:4d} gain50={s['gain50']:4d} coverage={cov:.2f}")
    print()
    head = " ".join(f"fixed{b}" for b in fixed)
    print(f"{'dataset':16s} coverage  err_ours  err_sp  err_gain50  {head}  within20_ours  within20_sp")
    for name, cs in cover.items():
        e = np.array(errs[name])
        print(f"{name:16s} {np.mean(cs):8.3f}  {e[:, 0].mean():8.3f}  {e[:, 1].mean():6.3f}  {e[:, 2].mean():10.3f}  "
              + " ".join(f"{v:7.3f}" for v in e[:, 3:].mean(0))
              + f"  {np.mean(within_ours[name]):13.2f}  {np.mean(within_sp[name]):11.2f}")
    all_e = np.concatenate([np.array(v) for v in errs.values()])
    ratio = all_e[:, 0].mean() / all_e[:, 1].mean() if all_e[:, 1].mean() > 0 else math.inf
    print(f"coverage_min={min(np.mean(cs) for cs in cover.values()):.3f} "
          f"stop_within_20pct={np.mean(within):.3f} stop_err_vs_sp={ratio:.3f}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=DATASETS)
    ap.add_argument("--strategies", default="margin,seq-margin")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--budget", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--audit-rate", type=float, default=0.1)
    ap.add_argument("--stop-gain", type=float, default=DEFAULT_STOP_GAIN)
    ap.add_argument("--fixed-budgets", default="200,500")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/stopping.jsonl"))
    ap.add_argument("--rules-only", type=Path, nargs="+", default=None, metavar="TRACE",
                    help="no labeling runs: apply the stop rules to the runs saved in these --out files")
    args = ap.parse_args(argv)
    fixed = [int(b) for b in args.fixed_budgets.split(",") if b]
    if args.rules_only is not None:
        records = [json.loads(line) for f in args.rules_only for line in f.open() if line.strip()]
        summarize(records, args.stop_gain, fixed)
        return
    torch.set_num_threads(args.threads)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    records = []
    with args.out.open("w") as fh:
        for name in args.datasets.split(","):
            ds = load_dataset(name)
            for strat in args.strategies.split(","):
                for seed in range(args.first_seed, args.first_seed + args.seeds):
                    t0 = time.perf_counter()
                    rows = run(ds, strat, seed, budget=args.budget, batch=args.batch, audit_rate=args.audit_rate)
                    cov = float(np.mean([r["low"] <= r["true_acc"] <= r["high"] for r in rows]))
                    cov_model = float(np.mean([r["model_low"] <= r["true_acc"] <= r["model_high"] for r in rows]))
                    cov_stale = float(np.mean([r["stale_low"] <= r["true_acc"] <= r["stale_high"] for r in rows]))
                    cov_loo = float(np.mean([r["loo_low"] <= r["true_acc"] <= r["loo_high"] for r in rows]))
                    width = float(np.mean([r["high"] - r["low"] for r in rows]))
                    rec = {"dataset": name, "strategy": strat, "seed": seed, "coverage": cov,
                           "coverage_model": cov_model, "coverage_logged": cov_stale, "coverage_loo": cov_loo,
                           "rows": rows}
                    records.append(rec)
                    fh.write(json.dumps(rec) + "\n")
                    fh.flush()
                    print(f"{name:16s} {strat:10s} seed={seed} coverage={cov:.2f} (logged {cov_stale:.2f}, "
                          f"loo {cov_loo:.2f}, model {cov_model:.2f}) width={width:.3f} "
                          f"audits={rows[-1]['n_audit']} final={rows[-1]['test_acc']:.3f} "
                          f"[{time.perf_counter() - t0:.0f}s]", flush=True)
    print()
    summarize(records, args.stop_gain, fixed)


if __name__ == "__main__":
    main()

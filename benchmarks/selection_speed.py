"""Selection speed on a large pool: sequential margin (a Bayesian update after every pick) vs BADGE.

Synthetic pool (default 100,000 × 384, 10 classes), posterior fitted on ~100 labeled points. In the
same run and process:

* ``topb-margin``   — margin scored once, top-b (reference point);
* ``seq-margin``    — :class:`Sequential` margin, b picks from the WHOLE pool, each followed by a
  rank-1 update (cached logits/variances refreshed in O(N·D));
* ``badge``         — BADGE (k-means++ on gradient embeddings), b picks from the whole pool;
* ``ell``           — expected log-loss reduction: candidates scored per second (every candidate ×
  every label, rank-1 closed form, against a reference set).

The LAST line is ``seq_vs_badge_time_ratio=<seq_time / badge_time>``.

    python benchmarks/selection_speed.py [--n 100000] [--d 384] [--c 10] [--b 100] [--labeled 100]
"""

from __future__ import annotations

import argparse
import time

import torch

from bayesal import HeadConfig, LastLayerLaplace
from bayesal.strategies import BADGE, ExpectedLogLossReduction, LabeledSet, MarginSampling, is_oracle, make_strategy


def make_pool(n: int, d: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian class clusters in ``d`` dimensions, float64 ``(n, d)`` features and ``(n,)`` labels."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=g, dtype=torch.float64) * 0.1
    y = torch.randint(c, (n,), generator=g)
    x = centers[y] + torch.randn(n, d, generator=g, dtype=torch.float64) * 0.5
    return x, y


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=384)
    ap.add_argument("--c", type=int, default=10)
    ap.add_argument("--b", type=int, default=100)
    ap.add_argument("--labeled", type=int, default=100)
    ap.add_argument("--update-with", default="most_likely", choices=["oracle", "most_likely", "sampled", "expected"])
    ap.add_argument("--ell-candidates", type=int, default=2000)
    ap.add_argument("--ell-reference", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    x, y = make_pool(args.n + args.labeled, args.d, args.c, args.seed)
    lx, ly, pool, pool_y = x[: args.labeled], y[: args.labeled], x[args.labeled :], y[args.labeled :]
    post, fit_s = timed(lambda: LastLayerLaplace(random_state=args.seed, head_config=HeadConfig()).fit(
        lx, ly, num_classes=args.c))
    labeled = LabeledSet(lx, ly)
    print(f"pool={args.n}x{args.d} classes={args.c} labeled={args.labeled} b={args.b} "
          f"threads={torch.get_num_threads()} fit_s={fit_s:.2f} "
          f"pool_acc={float((post.predict(pool) == pool_y).double().mean()):.3f}")

    gen = lambda: torch.Generator().manual_seed(args.seed)  # noqa: E731
    topb, topb_s = timed(lambda: MarginSampling().query(post, pool, labeled, args.b, gen()))
    seq = make_strategy(f"seq-margin@{args.update_with}")
    if is_oracle(seq):
        seq_res, seq_s = timed(lambda: seq.query_with_labels(post, pool, labeled, args.b, gen(), pool_y))
    else:
        seq_res, seq_s = timed(lambda: seq.query(post, pool, labeled, args.b, gen()))
    badge_res, badge_s = timed(lambda: BADGE().query(post, pool, labeled, args.b, gen()))
    overlap = len(set(seq_res.indices.tolist()) & set(topb.indices.tolist()))
    print(f"topb-margin: {topb_s:.2f} s")
    print(f"seq-margin ({args.update_with}): {seq_s:.2f} s  ({seq_s / args.b * 1e3:.1f} ms/pick, "
          f"{overlap}/{args.b} picks shared with top-b)")
    print(f"badge: {badge_s:.2f} s  ({badge_s / args.b * 1e3:.1f} ms/pick)")

    n_ell = min(args.ell_candidates, args.n)
    ell = ExpectedLogLossReduction(n_reference=args.ell_reference)
    _, ell_s = timed(lambda: ell.query(post, pool[:n_ell], labeled, 1, gen()))
    st = ell.last_stats
    print(f"ell: {st['candidates_scored']} candidates x {args.c} labels vs {st['n_reference']} reference points "
          f"in {st['seconds']:.2f} s -> ell_candidates_per_second={st['candidates_per_second']:.0f} "
          f"(query total {ell_s:.2f} s)")
    print(f"seq_vs_badge_time_ratio={seq_s / badge_s:.3f}")


if __name__ == "__main__":
    main()

"""Sequential ("pseudo-batch") selection: pick one, update the posterior with its label, repeat.

:class:`Sequential` updates with a label it makes up (deployable); :class:`OracleSequential` with the
candidates' true labels (the paper's simulation, an :class:`~.base.OracleStrategy`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import numpy as np
import torch

from bayesal.exceptions import InvalidInputError
from bayesal.laplace import LastLayerLaplace, Option, SharedLaplace, mean_field_probs

from ._common import argmax_first, check_candidate_labels, prepare, tiled_moments
from .base import LabeledSet, OracleStrategy, QueryResult, QueryStrategy
from .score import ScoreStrategy

if TYPE_CHECKING:
    from bayesal.laplace import TiledRows

__all__ = ["Sequential", "OracleSequential", "UpdateWith", "UPDATE_WITH", "DEPLOYABLE_UPDATES"]

#: Picks scored over all rows, without bounds, after a pick at which most rows could still win.
DENSE_PICKS = 8
#: Rows scored at a time when all rows are scored: the score's temporaries of a block stay in the
#: CPU caches (for a large pool, whole-pool temporaries would each be a trip through memory).
SCORE_BLOCK = 65536


def _best_alive(scores: torch.Tensor, alive: torch.Tensor) -> int:
    """The alive row with the best score, the lowest index among ties (NaN counts as lowest)."""
    i = argmax_first(scores.masked_fill(~alive, -torch.inf))
    return i if bool(alive[i]) else int(alive.nonzero()[0])  # every alive score NaN or -inf


def _score_all(base: ScoreStrategy, post: LastLayerLaplace, z: torch.Tensor, var: torch.Tensor,
               gen: torch.Generator) -> torch.Tensor:
    """``base``'s utility ``(N,)`` of every row (a row-wise deterministic score), in row blocks."""
    n = z.shape[0]
    if n <= SCORE_BLOCK:
        return base.score_logits(post, z, var, gen)
    out = torch.empty(n, dtype=z.dtype, device=z.device)
    for s in range(0, n, SCORE_BLOCK):
        out[s : s + SCORE_BLOCK] = base.score_logits(post, z[s : s + SCORE_BLOCK], var[s : s + SCORE_BLOCK], gen)
    return out


class UpdateWith(Option):
    """Which label the simulated update after each pick uses."""

    ORACLE = "oracle"  #: the candidate's true label (simulation only)
    MOST_LIKELY = "most_likely"  #: argmax of the mean-field predictive
    SAMPLED = "sampled"  #: drawn from the mean-field predictive with the generator
    EXPECTED = "expected"  #: the soft label ``p`` (the ``p``-weighted average of the per-label mean steps)


UPDATE_WITH: tuple[str, ...] = UpdateWith.choices()
#: The modes that need no true labels.
DEPLOYABLE_UPDATES: tuple[str, ...] = tuple(m for m in UPDATE_WITH if m != UpdateWith.ORACLE)


class _SequentialSelection:
    """Batch by repeated single picks of ``base`` with a Bayesian update after each pick.

    Every simulated update is the posterior's own (its step size ``gamma``). For
    :class:`~.score.ScoreStrategy` bases on a shared-covariance posterior (and ``fast=True``) the
    candidates' MAP logits and variances are cached and refreshed with the posterior's
    :meth:`~bayesal.laplace.LastLayerLaplace.logit_step`, ``O(N·D)`` per pick; other bases are
    re-queried with ``batch_size=1`` on the updated posterior (the picks join the labeled set, with
    the update label's argmax). The final posterior is left in ``last_posterior_``; the caller's
    posterior is never modified.

    With ``compute_dtype=torch.float32`` the fast path keeps a float32 copy of the candidates for its
    ``O(N·D)`` products (the initial moments and the per-pick ``Φ Σφ``): half the memory traffic of
    float64, which bounds the per-pick refresh of a large pool. The copy is kept in column-major tiles
    (:class:`~bayesal.laplace.linalg.TiledRows`), so the per-pick product is one batched matrix product
    over a few contiguous runs of memory, on every intra-op thread. The cached
    logits and variances accumulate in the posterior's dtype and every update of the posterior is its own (float64 rows),
    so only the products carry float32 round-off (relative ~1e-7); picks can differ from float64
    products only between candidates whose scores tie to that precision.
    """

    def __init__(self, base: QueryStrategy | OracleStrategy, update_with: UpdateWith, fast: bool,
                 prune: bool = True, compute_dtype: torch.dtype | None = None) -> None:
        if compute_dtype is not None and not (isinstance(compute_dtype, torch.dtype) and compute_dtype.is_floating_point):
            raise InvalidInputError(f"compute_dtype must be a floating torch.dtype or None, got {compute_dtype!r}")
        self.base = base
        self.update_with = update_with
        self.fast = bool(fast)
        self.prune = bool(prune)
        self.compute_dtype = compute_dtype
        self.last_posterior_: LastLayerLaplace | None = None

    # ---------------------------------------------------------------- labels
    def _target(
        self, probs: torch.Tensor, index: int, oracle: torch.Tensor | None, generator: torch.Generator
    ) -> torch.Tensor:
        """Update target ``(C,)`` for the pick: one-hot, or the soft label ``p`` for 'expected'."""
        c = probs.shape[0]
        if self.update_with is UpdateWith.EXPECTED:
            return probs / probs.sum()
        if self.update_with is UpdateWith.ORACLE:
            if oracle is None:
                raise InvalidInputError("update_with='oracle' needs the candidates' true labels")
            y = int(oracle[index])
        elif self.update_with is UpdateWith.MOST_LIKELY:
            y = argmax_first(probs)
        else:
            y = int(torch.multinomial((probs / probs.sum()).cpu(), 1, generator=generator)[0])
        return torch.nn.functional.one_hot(torch.tensor(y), c).to(dtype=probs.dtype, device=probs.device)

    # ----------------------------------------------------------------- query
    def _cached(self, posterior: LastLayerLaplace) -> bool:
        """Whether the query takes the cached-logit fast path (``fast``, a score base, shared ``Σ``)."""
        return self.fast and isinstance(self.base, ScoreStrategy) and isinstance(posterior, SharedLaplace)

    def _candidate_dtype(self, posterior: LastLayerLaplace, candidates: object) -> torch.dtype | None:
        """``compute_dtype`` when the fast path takes its products in it and the candidates come in it:
        they are then kept as given (each pick's row is exact in the posterior's dtype), with no copy of
        the pool in the posterior's dtype; ``None`` (the posterior's dtype) otherwise."""
        dt = self.compute_dtype
        if dt is None or not (posterior.is_fitted and self._cached(posterior)):
            return None
        if isinstance(candidates, torch.Tensor):
            given = candidates.dtype
        elif isinstance(candidates, np.ndarray) and candidates.dtype.kind == "f":
            given = torch.from_numpy(np.empty(0, dtype=candidates.dtype)).dtype
        else:
            return None
        return dt if given == dt else None

    def _select(
        self,
        posterior: LastLayerLaplace,
        x: torch.Tensor,
        lx: torch.Tensor,
        ly: torch.Tensor,
        b: int,
        gen: torch.Generator,
        oracle: torch.Tensor | None,
    ) -> QueryResult:
        # picks simulate the Newton update (cached logit steps, or the update itself without the exact
        # refits of the posterior's early phase): both paths give the same batch
        post = posterior.with_update_options(exact_until=0).copy()
        if self._cached(post):
            result = self._query_cached(post, x, b, gen, oracle)
        else:
            result = self._query_requery(post, x, lx, ly, b, gen, oracle)
        self.last_posterior_ = post
        return result

    def _query_cached(
        self, post: LastLayerLaplace, x: torch.Tensor, b: int, gen: torch.Generator, oracle: torch.Tensor | None
    ) -> QueryResult:
        base: ScoreStrategy = self.base  # type: ignore[assignment]
        dt = self.compute_dtype
        xc: torch.Tensor | TiledRows
        if dt is None or dt == post.dtype:
            xc = x
            z, var = post.logits(x, checked=True), post.logit_variance(x, checked=True)
        else:  # products with a low-precision copy of the pool, caches in the posterior's dtype
            xc, z, var = tiled_moments(post, x, dt)
        z = z.T.contiguous().T  # class-major: the per-row softmax and maxima over classes run along contiguous rows
        lip = None if base.stochastic else base.mean_field_lipschitz()
        if self.prune and lip is not None:
            return self._query_pruned(post, x, xc, z, var, b, gen, oracle, lip)
        alive = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        picks, utils = [], []
        for _ in range(b):
            if base.stochastic:  # score exactly the remaining rows, as a re-query would (same draws)
                rem = alive.nonzero().flatten()
                u = base.score_logits(post, z[rem], var[rem], gen)
                j = argmax_first(u)
                i = int(rem[j])
            else:  # row-wise deterministic scores: score all, mask the picks
                u = _score_all(base, post, z, var, gen)
                i = j = _best_alive(u, alive)
            pred = mean_field_probs(z[i : i + 1], var[i : i + 1], post.lambda_mf, post.fitted_temperature)[0]
            target = self._target(pred, i, oracle, gen)
            row = x[i].to(post.dtype)
            step = post.logit_step(row, target, logits=z[i])
            z, var = step.apply(xc, z, var)
            post.absorb(step)
            picks.append(i)
            utils.append(u[j])
            alive[i] = False
        return QueryResult(torch.tensor(picks, dtype=torch.long, device=x.device), torch.stack(utils).to(post.dtype))

    def _query_pruned(
        self,
        post: LastLayerLaplace,
        x: torch.Tensor,
        xc: torch.Tensor | TiledRows,
        z: torch.Tensor,
        var: torch.Tensor,
        b: int,
        gen: torch.Generator,
        oracle: torch.Tensor | None,
        lip: float,
    ) -> QueryResult:
        """The cached loop with lazy re-scoring: the same picks, far fewer score evaluations.

        The logits and variances of every candidate are refreshed exactly as in the plain loop (one
        ``O(N·D)`` product per pick). The score — the costly part, ``O(N·C)`` with a softmax — is
        recomputed only for candidates that can still win. A candidate scored when its scaled logits
        were ``w_a = κ_a z_a`` has now ``w = κ z`` with ``span(w − w_a) ≤ κ·span(z − z_a) +
        (κ − κ_a)·span(z_a)``; ``span(z − z_a)`` grows by ``|γ/denom · (Φ Σφ)_n| · span(y − p)`` per
        pick (exact products) and ``|u − u_a| ≤ L · span(w − w_a)`` (``L`` from the base), tighter for
        confident rows (``‖Δp‖₁ ≤ 2S(1 − p_top e^(−S))``). Stale rows are re-scored in blocks, highest
        upper bound first, until no stale row's upper bound reaches the best exact score; the rest is
        strictly worse, so the argmax (ties to the lowest index) is the plain loop's. When most rows
        can still win (the bounds would not prune), all rows are scored, and so are they for the next
        :data:`DENSE_PICKS` picks without computing bounds, before the bounds are tried again.
        """
        base: ScoreStrategy = self.base  # type: ignore[assignment]
        lam = post.lambda_mf
        t2 = post.fitted_temperature**2  # κ = (T² + λσ²)^(−½), the mean-field scale of the tempered likelihood
        n = x.shape[0]
        alive = torch.ones(n, dtype=torch.bool, device=x.device)
        u_at = _score_all(base, post, z, var, gen)  # exact score when last computed
        kappa_at = torch.rsqrt(t2 + lam * var.clamp_min(0))
        span_at = z.amax(1) - z.amin(1)
        drift = torch.zeros_like(u_at)  # bound on span(z − z_at)
        floor_at = base.top_probability_floor(u_at)  # lower bound on the top probability when scored
        if floor_at is not None:
            floor_at = floor_at.clamp(0.0, 1.0)
        fresh = torch.ones(n, dtype=torch.bool, device=x.device)  # scored at the current state
        # the per-pick bounds go through these (N,) buffers: fresh temporaries of a large pool cost page
        # faults on every pick
        kappa, moved, tmp, upper = (torch.empty_like(var) for _ in range(4))
        # after a pick at which most rows could still win, the next picks score all rows without bounds
        # (the bounds would not prune); then the bounds are tried again from fresh references
        dense_left = 0
        picks, utils = [], []
        for _ in range(b):
            if not dense_left and not bool(fresh.all()):
                torch.clamp_min(var, 0, out=kappa).mul_(lam).add_(t2).rsqrt_()  # κ = (T² + λσ²)^(−½)
                torch.sub(kappa, kappa_at, out=tmp).abs_().mul_(span_at)
                torch.addcmul(tmp, kappa, drift, out=moved)  # κ·drift + |κ − κ_at|·span_at ≥ span(w − w_at)
                if floor_at is not None:
                    # ‖Δp‖₁ ≤ ∫ 2(1 − p_k(s)) S ds with p_k(s) ≥ p_k(0) e^(−sS) for the top class k
                    torch.neg(moved, out=tmp).exp_().mul_(floor_at).neg_().add_(1.0).mul_(moved).mul_(2.0)
                    torch.minimum(moved, tmp, out=moved)
                # round-off slack: the cached logits and scores carry ~1e-16 relative errors
                torch.add(u_at, moved, alpha=lip * (1.0 + 1e-9), out=upper).add_(1e-10).nan_to_num_(nan=torch.inf)
                # re-score the most promising stale rows, a block at a time, until no stale row can
                # reach the best exact score
                best = -torch.inf
                cand = (alive & ~fresh).nonzero().flatten()
                block = 256
                while cand.numel():
                    if block > 256 and cand.numel() > n // 4:
                        # most rows may still win: this pick and the next DENSE_PICKS score all rows
                        dense_left = DENSE_PICKS + 1
                        break
                    # the highest upper bounds first, then all rows that can still win
                    if cand.numel() > block:
                        cand = cand[upper[cand].topk(block).indices]
                    u_at[cand] = base.score_logits(post, z[cand], var[cand], gen)
                    if floor_at is not None:
                        floor_at[cand] = cast(torch.Tensor, base.top_probability_floor(u_at[cand])).clamp(0.0, 1.0)
                    kappa_at[cand] = kappa[cand]
                    span_at[cand] = z[cand].amax(1) - z[cand].amin(1)
                    drift[cand] = 0.0
                    fresh[cand] = True
                    best = max(best, float(torch.nan_to_num(u_at[cand], nan=-torch.inf).max()))
                    cand = (alive & ~fresh & (upper >= best)).nonzero().flatten()
                    block *= 2
            if dense_left:  # all rows in place, without gathering them
                dense_left -= 1
                u_at = _score_all(base, post, z, var, gen)
                if not dense_left:  # the bounds resume from this state
                    if floor_at is not None:
                        floor_at = cast(torch.Tensor, base.top_probability_floor(u_at)).clamp_(0.0, 1.0)
                    torch.clamp_min(var, 0, out=kappa_at).mul_(lam).add_(t2).rsqrt_()
                    torch.sub(z.amax(1), z.amin(1), out=span_at)
                    drift.zero_()
                fresh.fill_(True)
            if bool(fresh.all()):  # every score is exact: as the plain loop
                i = _best_alive(u_at, alive)
            else:
                rows = (alive & fresh).nonzero().flatten()
                i = int(rows[argmax_first(u_at[rows])])  # rows ascend, so ties still go to the lowest index
            pred = mean_field_probs(z[i : i + 1], var[i : i + 1], post.lambda_mf, post.fitted_temperature)[0]
            target = self._target(pred, i, oracle, gen)
            row = x[i].to(post.dtype)  # exact: the candidates are in the posterior's dtype or came in float32
            step = post.logit_step(row, target, logits=z[i])
            z, var, prod = step.apply_with_products(xc, z, var, inplace=True)  # the caches are this loop's own
            if not dense_left:  # (a pick scored densely next resets the references anyway)
                resid = step.target - step.probs
                drift.add_(torch.abs(prod, out=tmp), alpha=abs(step.gamma / step.denom) * float(resid.max() - resid.min()))
            fresh.fill_(False)
            post.absorb(step)
            picks.append(i)
            utils.append(u_at[i].clone())
            alive[i] = False
        return QueryResult(torch.tensor(picks, dtype=torch.long, device=x.device), torch.stack(utils).to(post.dtype))

    def _query_requery(
        self,
        post: LastLayerLaplace,
        x: torch.Tensor,
        lx: torch.Tensor,
        ly: torch.Tensor,
        b: int,
        gen: torch.Generator,
        oracle: torch.Tensor | None,
    ) -> QueryResult:
        alive = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        picks, utils = [], []
        for _ in range(b):
            rem = alive.nonzero().flatten()
            sub = x[rem]
            if isinstance(self.base, ScoreStrategy):
                u = self.base.scores(post, sub, gen)
                j = argmax_first(u)
                util = u[j]
            else:
                if isinstance(self.base, OracleStrategy):
                    if oracle is None:
                        raise InvalidInputError(f"{type(self.base).__name__} needs the candidates' true labels")
                    res = self.base.query_with_labels(post, sub, LabeledSet(lx, ly), 1, gen, oracle[rem])
                else:
                    res = self.base.query(post, sub, LabeledSet(lx, ly), 1, gen)
                j, util = int(res.indices[0]), res.utilities[0]
            i = int(rem[j])
            pred = post.predict_proba(x[i : i + 1])[0]
            target = self._target(pred, i, oracle, gen)
            post.update(x[i : i + 1], target.unsqueeze(0), method="rank1", inplace=True)
            lx = torch.cat([lx, x[i : i + 1]])
            ly = torch.cat([ly, target.argmax().view(1).to(ly.dtype)])
            picks.append(i)
            utils.append(util)
            alive[i] = False
        return QueryResult(torch.tensor(picks, dtype=torch.long, device=x.device), torch.stack(utils).to(post.dtype))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base!r}, update_with={self.update_with.value!r})"


class Sequential(_SequentialSelection, QueryStrategy):
    """Sequential selection with made-up labels: deployable (no true labels needed).

    Parameters
    ----------
    base : QueryStrategy
        The strategy asked for one pick at a time.
    update_with : {"expected", "most_likely", "sampled"}
        The label of each simulated update: the soft label ``p`` of the mean-field predictive
        (default), its argmax, or a draw from it with the generator. For true labels use
        :class:`OracleSequential`.
    fast : bool
        Use the cached-logit fast path where it applies.
    prune : bool
        In the fast path, re-score only the candidates whose score can still be the best (exact
        bound, the same picks); applies to mean-field margin and least confidence.
    compute_dtype : torch.dtype, optional
        dtype of the fast path's pool products, e.g. ``torch.float32`` for large pools (caches and
        posterior stay in the posterior's dtype); ``None`` (default) uses the posterior's dtype.
    """

    name = "sequential"

    def __init__(self, base: QueryStrategy, update_with: str | UpdateWith = UpdateWith.EXPECTED, fast: bool = True,
                 prune: bool = True, compute_dtype: torch.dtype | None = None) -> None:
        mode = UpdateWith.parse(update_with, "update_with")
        if mode is UpdateWith.ORACLE:
            raise InvalidInputError(
                "Sequential(update_with='oracle') would need the candidates' true labels; use "
                f"OracleSequential(base) in simulations, or one of {DEPLOYABLE_UPDATES} to deploy"
            )
        if isinstance(base, OracleStrategy):
            raise InvalidInputError(
                f"base {base!r} needs true labels; wrap it in OracleSequential, or pick a deployable base"
            )
        if not isinstance(base, QueryStrategy):
            raise InvalidInputError(f"base must be a QueryStrategy, got {type(base).__name__}")
        super().__init__(base, mode, fast, prune, compute_dtype)

    def query(
        self,
        posterior: LastLayerLaplace,
        candidates: torch.Tensor,
        labeled: LabeledSet,
        batch_size: int,
        generator: torch.Generator,
    ) -> QueryResult:
        """See :meth:`QueryStrategy.query`; the final simulated posterior is left in ``last_posterior_``."""
        x, lx, ly, b, gen = prepare(posterior, candidates, labeled, batch_size, generator,
                                    dtype=self._candidate_dtype(posterior, candidates))
        return self._select(posterior, x, lx, ly, b, gen, None)


class OracleSequential(_SequentialSelection, OracleStrategy):
    """Sequential selection that updates with the candidates' true labels (the paper's simulation).

    Parameters
    ----------
    base : QueryStrategy or OracleStrategy
        The strategy asked for one pick at a time (an oracle base gets the remaining labels).
    update_with : {"oracle", "expected", "most_likely", "sampled"}
        The label of each simulated update; default the true one.
    fast : bool
        Use the cached-logit fast path where it applies.
    prune : bool
        In the fast path, re-score only the candidates whose score can still be the best (exact
        bound, the same picks); applies to mean-field margin and least confidence.
    compute_dtype : torch.dtype, optional
        dtype of the fast path's pool products, e.g. ``torch.float32`` for large pools (caches and
        posterior stay in the posterior's dtype); ``None`` (default) uses the posterior's dtype.
    """

    name = "oracle_sequential"

    def __init__(
        self, base: QueryStrategy | OracleStrategy, update_with: str | UpdateWith = UpdateWith.ORACLE, fast: bool = True,
        prune: bool = True, compute_dtype: torch.dtype | None = None,
    ) -> None:
        if not isinstance(base, (QueryStrategy, OracleStrategy)):
            raise InvalidInputError(f"base must be a QueryStrategy or OracleStrategy, got {type(base).__name__}")
        super().__init__(base, UpdateWith.parse(update_with, "update_with"), fast, prune, compute_dtype)

    def query_with_labels(
        self,
        posterior: LastLayerLaplace,
        candidates: torch.Tensor,
        labeled: LabeledSet,
        batch_size: int,
        generator: torch.Generator,
        candidate_labels: torch.Tensor,
    ) -> QueryResult:
        """See :meth:`OracleStrategy.query_with_labels`; the final simulated posterior is left in
        ``last_posterior_``."""
        x, lx, ly, b, gen = prepare(posterior, candidates, labeled, batch_size, generator,
                                    dtype=self._candidate_dtype(posterior, candidates))
        oracle = check_candidate_labels(candidate_labels, x.shape[0], posterior.num_classes)
        return self._select(posterior, x, lx, ly, b, gen, oracle)

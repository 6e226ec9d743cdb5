"""Look-ahead strategies that score the posterior *after* a simulated Bayesian update.

* :class:`OracleLookahead` — the paper's upper bound: candidate batches updated with their true labels,
  scored by cross-entropy on a held-out reference set.
* :class:`ExpectedLogLossReduction` — deployable: for every candidate and every label, the rank-1
  updated predictive on a reference set, its expected log-loss (or 0-1 error) under its own
  predictive, averaged over labels with ``p(y|x)``.

Both use closed forms on a shared-covariance posterior (``Σ`` shared by the classes), never a
re-inference: with ``K = Φ_R Σ Φᵀ`` the reference logits move by ``γ K_R· Σ'-scaled ⊗ (y − p)`` and
the reference variances drop by a term that does not depend on the label.
"""

from __future__ import annotations

import time

import torch

from bayesal.exceptions import InvalidInputError
from bayesal.laplace import (
    BLOCK_ELEMENTS,
    LastLayerLaplace,
    SharedLaplace,
    batch_update_reference,
    curvature_weights,
    mean_field_probs,
    mean_field_scaled,
)
from bayesal.utils import as_features

from ._common import argmax_first, check_candidate_labels, prepare, top_two
from ._kmeans import kmeans, sq_dists
from .base import LabeledSet, OracleStrategy, QueryResult, QueryStrategy
from .sequential import UpdateWith

__all__ = ["OracleLookahead", "ExpectedLogLossReduction"]


def _check_shared(posterior: LastLayerLaplace, who: str) -> None:
    if not isinstance(posterior, SharedLaplace):
        raise InvalidInputError(f"{who} needs a posterior with hessian='shared' (covariance I_C ⊗ Σ)")


def _laplace_units(posterior: LastLayerLaplace) -> tuple[LastLayerLaplace, float, float]:
    """The posterior with its plain Laplace variances ``φᵀΣφ`` (the update's algebra needs them, e.g. in
    its denominators ``1 + m φᵀΣφ``), the mean-field constant that puts the predictive's spread ``τ``
    back (``λ_mf τ σ²`` is the tempered predictive's) and the likelihood's temperature ``T``."""
    return posterior.with_spread(1.0), posterior.lambda_mf * posterior.fitted_spread, posterior.fitted_temperature


class OracleLookahead(OracleStrategy):
    """Upper-bound look-ahead: best of ``n_batches`` candidate batches by held-out cross-entropy.

    Batches: a third uniformly random, a third k-means-diverse (the candidate nearest each center of a
    seeded k-means with ``b`` clusters), a third random among the candidates whose margin uncertainty
    ``1 − (p_(1) − p_(2))`` is above its mean. Each batch is scored after a Woodbury update with its
    true labels (``candidate_labels``), by the mean-field cross-entropy on ``(reference_features,
    reference_labels)``. Utilities: the cross-entropy reduction of the chosen batch (same for each
    pick). ``last_stats`` holds the scores of all batches and the time taken. The simulated update is
    the posterior's (its step size ``gamma``).
    """

    name = "oracle_lookahead"

    def __init__(
        self,
        reference_features: torch.Tensor,
        reference_labels: torch.Tensor,
        n_batches: int = 300,
        kmeans_iter: int = 10,
    ) -> None:
        if n_batches < 1:
            raise InvalidInputError(f"n_batches must be >= 1, got {n_batches}")
        self.reference_features = as_features(reference_features, name="reference_features")
        self.reference_labels = torch.as_tensor(reference_labels).reshape(-1).long()
        if self.reference_labels.shape[0] != self.reference_features.shape[0]:
            raise InvalidInputError("reference_features and reference_labels differ in length")
        if self.reference_features.shape[0] == 0:
            raise InvalidInputError("the reference set is empty")
        self.n_batches = int(n_batches)
        self.kmeans_iter = int(kmeans_iter)
        self.last_stats: dict = {}

    def _batches(self, post: LastLayerLaplace, x: torch.Tensor, b: int, gen: torch.Generator) -> list[torch.Tensor]:
        n = x.shape[0]
        n_km = n_mg = self.n_batches // 3
        n_rand = self.n_batches - n_km - n_mg
        probs = post.predict_proba(x)
        first, second = top_two(probs)
        unc = 1.0 - (first - second)
        above = (unc > unc.mean()).nonzero().flatten()
        if above.numel() < b:
            above = torch.arange(n, device=x.device)
        out = [torch.randperm(n, generator=gen)[:b].to(x.device) for _ in range(n_rand)]
        for _ in range(n_km):
            centers, _ = kmeans(x, b, gen, n_iter=self.kmeans_iter)
            d = sq_dists(centers, x)
            chosen: list[int] = []
            for row in d:  # nearest not-yet-chosen candidate per center
                if chosen:
                    row = row.clone()
                    row[chosen] = torch.inf
                chosen.append(int(row.argmin()))
            out.append(torch.tensor(chosen, dtype=torch.long, device=x.device))
        out += [above[torch.randperm(above.numel(), generator=gen)[:b].to(x.device)] for _ in range(n_mg)]
        return out

    def query_with_labels(
        self,
        posterior: LastLayerLaplace,
        candidates: torch.Tensor,
        labeled: LabeledSet,
        batch_size: int,
        generator: torch.Generator,
        candidate_labels: torch.Tensor,
    ) -> QueryResult:
        """See :meth:`OracleStrategy.query_with_labels`."""
        x, _, _, b, gen = prepare(posterior, candidates, labeled, batch_size, generator)
        _check_shared(posterior, "OracleLookahead")
        posterior, lam, temp = _laplace_units(posterior)
        y = check_candidate_labels(candidate_labels, x.shape[0], posterior.num_classes)
        c = posterior.num_classes
        t0 = time.perf_counter()
        ref = posterior.check_features(self.reference_features, name="reference_features")
        ref_y = self.reference_labels.to(posterior.device)
        if int(ref_y.min()) < 0 or int(ref_y.max()) >= c:
            raise InvalidInputError(f"reference_labels must lie in [0, {c - 1}]")
        z_r, var_r = posterior.logits(ref, checked=True), posterior.logit_variance(ref, checked=True)
        z_c = posterior.logits(x, checked=True)
        p_map = torch.softmax(z_c, dim=1)
        curv = curvature_weights(p_map, posterior.curvature)
        onehot = torch.nn.functional.one_hot(y, c).to(x.dtype)
        ref_sig = posterior.covariance_product(ref)  # (R, D)
        x_sig = posterior.covariance_product(x)  # (N, D)

        def cross_entropy(z: torch.Tensor, v: torch.Tensor) -> float:
            p = mean_field_probs(z, v, lam, temp)
            return float(-torch.log(p.gather(1, ref_y[:, None]).clamp_min(1e-300)).mean())

        now = cross_entropy(z_r, var_r)
        batches = self._batches(posterior, x, b, gen)
        scores = torch.empty(len(batches), dtype=torch.float64)
        for k, idx in enumerate(batches):
            xb = x[idx]
            z_new, v_new = batch_update_reference(
                z_r, var_r, ref_sig @ xb.T, x_sig[idx] @ xb.T, onehot[idx], p_map[idx], curv[idx], posterior.gamma
            )
            scores[k] = cross_entropy(z_new, v_new)
        best = argmax_first(-scores)
        idx = batches[best]
        self.last_stats = {
            "current_cross_entropy": now,
            "batch_cross_entropy": scores,
            "best_batch": best,
            "seconds": time.perf_counter() - t0,
        }
        util = torch.full((b,), now - float(scores[best]), dtype=x.dtype, device=x.device)
        return QueryResult(indices=idx, utilities=util)

    def __repr__(self) -> str:
        return f"OracleLookahead(n_batches={self.n_batches})"


class ExpectedLogLossReduction(QueryStrategy):
    """Expected reduction of the reference risk after a fantasized rank-1 update (no labels needed).

    ``utility(x) = R(now) − Σ_y p(y|x) R(x, y)``, where ``R`` is the mean over the reference set of
    the expected log-loss (``loss="log"``: the entropy of the mean-field predictive) or 0-1 error
    (``loss="zero_one"``: ``1 − max p``) under the updated model's own predictive. The reference set
    is ``reference`` if given, else a random subset of ``n_reference`` candidates (drawn with the
    generator). Every ``(x, y)`` pair is scored in closed form, vectorised in blocks of candidates
    (``chunk_elements`` bounds one ``(n, R, C)`` block; all labels of a candidate cost ``O(R·C)``
    through leave-one-out sums). Each fantasized ``(x, y)`` update is the closed-form first Newton
    step of the posterior's update (its step size ``gamma`` and curvature; with ``steps > 1`` the
    posterior iterates further, which the table does not follow, as ``N·C`` iterated solves per pick
    would cost more than the scoring). Batches: greedy, updating after each pick with the soft label
    ``p`` (``update_with="expected"``) or the most likely label, with the posterior's full update.
    ``last_stats["candidates_per_second"]`` reports the scoring throughput of the last query.
    """

    name = "expected_log_loss_reduction"

    def __init__(
        self,
        n_reference: int = 500,
        reference: torch.Tensor | None = None,
        loss: str = "log",
        update_with: str | UpdateWith = UpdateWith.EXPECTED,
        chunk_elements: int = BLOCK_ELEMENTS,
    ) -> None:
        if loss not in ("log", "zero_one"):
            raise InvalidInputError(f"unknown loss {loss!r}; choose 'log' or 'zero_one'")
        update_with = UpdateWith.parse(update_with, "update_with")
        if update_with not in (UpdateWith.EXPECTED, UpdateWith.MOST_LIKELY):
            raise InvalidInputError(f"unknown update_with {update_with.value!r}; choose 'expected' or 'most_likely'")
        if n_reference < 1:
            raise InvalidInputError(f"n_reference must be >= 1, got {n_reference}")
        self.n_reference = int(n_reference)
        self.reference = None if reference is None else as_features(reference, name="reference")
        self.loss = loss
        self.update_with = update_with
        self.chunk_elements = int(chunk_elements)
        self.last_stats: dict = {}

    def _risk(self, probs_scaled_logits: torch.Tensor) -> torch.Tensor:
        """Per-reference-point risk from (already variance-scaled) logits ``(..., C)``."""
        if self.loss == "log":
            logp = torch.log_softmax(probs_scaled_logits, dim=-1)
            return -(logp.exp() * logp).sum(-1)
        return 1.0 - torch.softmax(probs_scaled_logits, dim=-1).max(-1).values

    def risk_table(
        self,
        gamma: float,
        lambda_mf: float,
        z_c: torch.Tensor,
        var_c: torch.Tensor,
        curv: torch.Tensor,
        z_r: torch.Tensor,
        var_r: torch.Tensor,
        k_rc: torch.Tensor,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """``R(x, y)`` ``(N, C)`` after an update with step size ``gamma``, for candidates with MAP logits ``z_c (N, C)``, variances ``var_c``
        (``= φᵀΣφ``), curvatures ``curv (N,)``; reference ``z_r (R, C)``, ``var_r (R,)``,
        ``k_rc = Φ_R Σ Φ_cᵀ (R, N)``; the reference predictive's likelihood temperature ``temperature``."""
        n, c = z_c.shape
        r = z_r.shape[0]
        p_map = torch.softmax(z_c, dim=1)
        denom = 1.0 + curv * var_c  # 1 + m φᵀΣφ
        out = torch.empty(n, c, dtype=z_c.dtype, device=z_c.device)
        step = max(1, self.chunk_elements // (c * r))
        for start in range(0, n, step):
            sl = slice(start, min(n, start + step))
            k = k_rc[:, sl].T  # (n, R)
            v_new = var_r.unsqueeze(0) - curv[sl, None] * k * k / denom[sl, None]
            scale = torch.rsqrt(temperature * temperature + lambda_mf * v_new.clamp_min(0))  # (n, R)
            coef = (gamma / denom[sl, None]) * k  # (n, R)
            # scaled logits after the update with label y: base + delta · e_y
            base = (z_r.unsqueeze(0) - coef.unsqueeze(2) * p_map[sl].unsqueeze(1)) * scale.unsqueeze(2)
            out[sl] = self._risk_one_hot_shift(base, coef * scale).mean(1)
        return out

    def _risk_one_hot_shift(self, base: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """Risk ``(n, R, C_y)`` of the logits ``base (n, R, C) + delta (n, R) · e_y`` for every ``y``,
        in ``O(C)`` per ``(n, R)`` (leave-one-out sums instead of ``C`` separate softmaxes)."""
        bt = base - base.max(-1, keepdim=True).values  # ≤ 0, the max entry exactly 0
        e = bt.exp()
        top2 = bt.topk(2, dim=-1)
        first = top2.indices[..., :1]
        s_sum = e.sum(-1, keepdim=True)
        loo = s_sum - e  # Σ_{c≠y} e_c, exact enough unless y is the max class...
        loo.scatter_(-1, first, e.scatter(-1, first, 0.0).sum(-1, keepdim=True))  # ...computed directly there
        new = bt + delta.unsqueeze(-1)  # the shifted logit of class y
        lse = torch.logaddexp(loo.log(), new)
        if self.loss == "log":
            t_loo = (e * bt).sum(-1, keepdim=True) - e * bt  # Σ_{c≠y} e_c b_c (the max entry adds 0)
            return lse - (torch.exp(-lse) * t_loo + torch.exp(new - lse) * new)
        others = torch.zeros_like(bt).scatter_(-1, first, top2.values[..., 1:])  # max_{c≠y} b_c
        return 1.0 - torch.exp(torch.maximum(others, new) - lse)

    def query(
        self,
        posterior: LastLayerLaplace,
        candidates: torch.Tensor,
        labeled: LabeledSet,
        batch_size: int,
        generator: torch.Generator,
    ) -> QueryResult:
        """See :meth:`QueryStrategy.query`."""
        x, _, _, b, gen = prepare(posterior, candidates, labeled, batch_size, generator)
        _check_shared(posterior, "ExpectedLogLossReduction")
        if self.reference is not None:
            ref = posterior.check_features(self.reference, name="reference")
        else:
            ref = x[torch.randperm(x.shape[0], generator=gen)[: self.n_reference].to(x.device)]
        post, lam, temp = _laplace_units(posterior)
        post = post.copy()
        z_c, var_c = post.logits(x, checked=True), post.logit_variance(x, checked=True)
        z_r, var_r = post.logits(ref, checked=True), post.logit_variance(ref, checked=True)
        k_rc = post.covariance_product(ref) @ x.T
        alive = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        picks, utils = [], []
        scored, seconds = 0, 0.0
        for _ in range(b):
            t0 = time.perf_counter()
            rem = alive.nonzero().flatten()
            p_map = torch.softmax(z_c[rem], dim=1)
            curv = curvature_weights(p_map, post.curvature)
            table = self.risk_table(post.gamma, lam, z_c[rem], var_c[rem], curv, z_r, var_r, k_rc[:, rem], temp)
            pred = mean_field_probs(z_c[rem], var_c[rem], lam, temp)
            now = self._risk(mean_field_scaled(z_r, var_r, lam, temp)).mean()
            u = now - (pred * table).sum(1)
            seconds += time.perf_counter() - t0
            scored += rem.numel()
            j = argmax_first(u)
            i = int(rem[j])
            picks.append(i)
            utils.append(u[j])
            alive[i] = False
            if len(picks) == b:
                break
            # fantasized update: caches of candidates, reference and their kernel, and the posterior
            target = pred[j] if self.update_with is UpdateWith.EXPECTED else torch.nn.functional.one_hot(
                pred[j].argmax(), pred.shape[1]).to(x.dtype)
            step = post.logit_step(x[i], target, logits=z_c[i])
            k_rc = step.downdate_kernel(k_rc, ref, x)
            z_c, var_c = step.apply(x, z_c, var_c)
            z_r, var_r = step.apply(ref, z_r, var_r)
            post.absorb(step)
        self.last_stats = {
            "candidates_scored": scored,
            "seconds": seconds,
            "candidates_per_second": scored / max(seconds, 1e-12),
            "n_reference": ref.shape[0],
        }
        return QueryResult(torch.tensor(picks, dtype=torch.long, device=x.device), torch.stack(utils).to(x.dtype))

    def __repr__(self) -> str:
        return (f"ExpectedLogLossReduction(n_reference={self.n_reference}, loss={self.loss!r}, "
                f"update_with={self.update_with.value!r})")

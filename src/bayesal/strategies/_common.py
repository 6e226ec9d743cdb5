"""Shared helpers of the query strategies: input checks, deterministic top-b, predictive pieces."""

from __future__ import annotations

import numpy as np
import torch

from bayesal.data import Pool
from bayesal.exceptions import InvalidInputError
from bayesal.laplace import LastLayerLaplace, TiledRows, logit_sample_blocks
from bayesal.laplace import predictive_from_logits as _predictive
from bayesal.utils import as_features, as_generator

from .base import LabeledSet

__all__ = [
    "check_batch_size",
    "prepare",
    "top_b",
    "argmax_first",
    "predictive_from_logits",
    "logit_sample_chunks",
    "entropy",
    "top_two",
    "tiled_moments",
]

#: Row blocks of Monte Carlo logit samples (the posterior's own draws, see ``logit_sample_blocks``).
logit_sample_chunks = logit_sample_blocks


def check_batch_size(batch_size: int, n: int) -> int:
    """``batch_size`` as an int in ``[1, n]``; :class:`InvalidInputError` naming the problem otherwise."""
    if isinstance(batch_size, bool) or int(batch_size) != batch_size:
        raise InvalidInputError(f"batch_size must be an integer, got {batch_size!r}")
    b = int(batch_size)
    if b < 1:
        raise InvalidInputError(f"batch_size must be >= 1, got {b}")
    if n == 0:
        raise InvalidInputError("there are no candidates to choose from (the candidate pool is empty)")
    if b > n:
        raise InvalidInputError(f"batch_size={b} exceeds the number of candidates ({n})")
    return b


#: Largest out-of-core pool (bytes in float64) that strategies needing every row at once read into memory.
MAX_POOL_IN_MEMORY_BYTES = 4 * 2**30


def pool_in_memory(pool: Pool) -> np.ndarray:
    """All rows of ``pool`` ``(N, D)`` for strategies that touch every candidate per pick (sequential,
    look-ahead, BADGE, CoreSet, ...); a pool too large for that is an error naming what to do."""
    if pool.n_rows * pool.dim * 8 > MAX_POOL_IN_MEMORY_BYTES:
        raise InvalidInputError(
            f"a pool of {pool.n_rows:,} rows is too large for this strategy, which needs every candidate in "
            "memory; score the pool with a top-b strategy (margin, entropy, ...), or pass a candidate subset "
            "such as pool.take(indices) (e.g. the top-k of a top-b score)"
        )
    return pool.to_numpy()


def prepare(
    posterior: LastLayerLaplace,
    candidates: torch.Tensor,
    labeled: LabeledSet | None,
    batch_size: int,
    generator: torch.Generator | None,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, torch.Generator]:
    """Validate the query arguments.

    Returns candidates ``(N, D)`` (in ``dtype`` if given, then not yet checked for NaN/inf: see
    :func:`tiled_moments`) and labeled features ``(L, D)`` in the posterior's dtype, labeled
    labels ``(L,)`` (long), the batch size and a generator (a fresh one when ``None``).
    """
    if isinstance(candidates, Pool):
        candidates = pool_in_memory(candidates)
    # a pool kept in a low-precision dtype is checked for NaN/inf through its moments (see
    # tiled_moments), not by a pass over all its rows here
    x = posterior.check_features(candidates, name="candidates", dtype=dtype, check_finite=dtype is None)
    d = posterior.num_features
    b = check_batch_size(batch_size, x.shape[0])
    if labeled is None or torch.as_tensor(labeled.features).numel() == 0:
        lx = torch.zeros(0, d, dtype=posterior.dtype, device=posterior.device)
        ly = torch.zeros(0, dtype=torch.long, device=posterior.device)
    else:
        lx = posterior.check_features(labeled.features, name="labeled features")
        ly = torch.as_tensor(labeled.labels).reshape(-1).long().to(posterior.device)
        if ly.shape[0] != lx.shape[0]:
            raise InvalidInputError(f"labeled set has {lx.shape[0]} feature rows but {ly.shape[0]} labels")
    gen = generator if generator is not None else as_generator(None)
    return x, lx, ly, b, gen


def check_candidate_labels(candidate_labels: torch.Tensor | None, n: int, num_classes: int) -> torch.Tensor:
    """Integer ``candidate_labels (N,)`` in range; ``ValueError`` if missing or malformed."""
    if candidate_labels is None:
        raise InvalidInputError("this strategy needs candidate_labels (oracle labels of the candidates)")
    y = torch.as_tensor(candidate_labels).reshape(-1)
    if y.shape[0] != n:
        raise InvalidInputError(f"candidate_labels has {y.shape[0]} entries but there are {n} candidates")
    if y.is_floating_point():
        if not bool(torch.isfinite(y).all()) or not bool((y == y.round()).all()):
            raise InvalidInputError("candidate_labels must be integer class indices")
    y = y.long()
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise InvalidInputError(f"candidate_labels must lie in [0, {num_classes - 1}]")
    return y


def top_b(scores: torch.Tensor, b: int) -> torch.Tensor:
    """Indices ``(b,)`` of the ``b`` highest scores; ties go to the lower index, NaN counts as lowest."""
    s = torch.nan_to_num(scores, nan=-torch.inf)
    return torch.sort(s, descending=True, stable=True).indices[:b]


def argmax_first(scores: torch.Tensor) -> int:
    """Index of the maximum; the lowest index among ties (NaN counts as lowest). ``O(N)``."""
    # torch.argmax returns the first of several maximal values (documented), but NaN as the maximum
    return int(torch.argmax(torch.nan_to_num(scores, nan=-torch.inf)))


def predictive_from_logits(
    posterior: LastLayerLaplace,
    logits: torch.Tensor,
    variance: torch.Tensor,
    method: str = "mean_field",
    n_samples: int = 1000,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Predictive ``(N, C)`` of ``posterior`` (its ``λ_mf`` and likelihood temperature) from MAP
    ``logits (N, C)`` and ``variance``."""
    return _predictive(logits, variance, posterior.lambda_mf, method, n_samples, generator, posterior.fitted_temperature)


def entropy(probs: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shannon entropy (nats) along ``dim``; ``0 log 0 = 0``."""
    return -torch.special.xlogy(probs, probs).sum(dim)


def top_two(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Largest and second-largest entry of each row of ``probs (N, C)``: two ``(N,)`` tensors.

    A running maximum over the ``C`` columns, each an ``(N,)`` vector operation: several times faster
    than ``topk(2, dim=1)`` for the few classes of a classifier (torch reduces a short inner dimension
    row by row), fastest on the class-major layout the mean-field predictive returns. Ties give equal
    values, as ``topk`` does.
    """
    cols = probs.T  # (C, N)
    if cols.shape[0] < 2:
        raise InvalidInputError(f"need at least 2 classes for the two largest probabilities, got {cols.shape[0]}")
    first, second = torch.maximum(cols[0], cols[1]), torch.minimum(cols[0], cols[1])
    for k in range(2, cols.shape[0]):
        second = torch.maximum(second, torch.minimum(first, cols[k]))
        first = torch.maximum(first, cols[k])
    return first, second


def tiled_moments(
    posterior: LastLayerLaplace, x: torch.Tensor, dtype: torch.dtype, block: int = 8192
) -> tuple[TiledRows, torch.Tensor, torch.Tensor]:
    """A ``dtype`` copy of the candidates ``x (N, D)`` in column-major tiles
    (:class:`~bayesal.laplace.linalg.TiledRows`), and their MAP logits ``(N, C)`` and logit variances
    ``(N,)`` in the posterior's dtype, from products in ``dtype``.

    A product of the copy with one vector, ``xc @ v``, then runs as a batched matrix product over a
    few contiguous tiles on every intra-op thread (torch's CPU product over row-major rows uses one).
    Built ``block`` rows at a time: each block is converted once, its moments taken from the
    row-major block, and then transposed into place while cached.
    """
    n, d = x.shape
    out = TiledRows.empty(n, d, dtype, device=x.device)
    z = torch.empty((n, posterior.num_classes), dtype=posterior.dtype, device=x.device)
    var = torch.empty(n, dtype=posterior.dtype, device=x.device)
    for s in range(0, n, block):
        rows = x[s : s + block].to(dtype)
        try:  # NaN/inf rows show in their (non-finite) moments
            zb, vb = posterior.logit_moments(rows, compute_dtype=dtype)
        except InvalidInputError:
            as_features(rows, name="candidates", row_offset=s)  # names the first such row of the pool
            raise
        z[s : s + block], var[s : s + block] = zb, vb
        out.set_rows(s, rows)
    return out, z, var

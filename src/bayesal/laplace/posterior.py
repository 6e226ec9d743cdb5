"""Last-layer Laplace approximation with closed-form Bayesian updates (docs/method.md §2–4)."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from bayesal.exceptions import CorruptStateError, InvalidInputError, NotFittedError, NumericalError
from bayesal.utils.rng import RandomState, as_generator
from bayesal.utils.validation import (
    as_features,
    as_targets,
    check_dtype,
    check_num_classes,
    check_scalar,
    infer_num_classes,
)

from .evidence import cross_validate_prior, evidence_fixed_point, maximize_evidence
from .head import HeadConfig, train_head
from .linalg import (
    feature_spectrum,
    isotropic_minus_low_rank,
    row_quadratic_forms,
    row_quadratic_forms_low_rank,
    safe_cholesky,
    spd_inverse,
)
from .options import BLOCK_ELEMENTS, Curvature, Hessian, Predictive, UpdateMethod
from .predictive import (
    DEFAULT_LAMBDA_MF,
    centered,
    logit_scale,
    mc_logit_samples,
    mc_probs,
    mean_field_probs,
)
from .update import (
    DEFAULT_CURVATURE,
    DEFAULT_GAMMA,
    DEFAULT_STEPS,
    LogitStep,
    check_gamma,
    check_steps,
    curvature_weights,
    full_ggn_factor,
    gram_downdate,
    label_correction_step,
    rank1_downdate,
    shared_factor,
    span_newton,
)

__all__ = ["LastLayerLaplace"]

PRIOR_SELECTIONS = ("cv", "cv-predictive", "evidence")
FALLBACK_PRIOR_PRECISION = 1.0  # a string prior with nothing to choose from (see fit)
#: logit_moments looks for the low-rank form of Σ (one O(D³) eigendecomposition per posterior state)
#: when one call scores at least this many rows per feature: then the O(N·D²) variances dominate.
LOW_RANK_MIN_ROWS_PER_FEATURE = 16
#: An update keeps the covariance downdate ``Σ' = Σ − HᵀH`` of the shared covariance as its factor
#: ``H (k, D)`` until ``Σ'`` is read, while ``k`` stays at most this fraction of ``D``: the next
#: update's product ``ΦΣ'`` then costs at most twice the dense one.
PENDING_DOWNDATE_MAX_FRACTION = 0.25


@dataclass
class _MomentOperands:
    """:meth:`LastLayerLaplace.logit_moments`' operands for one posterior state (``mean_of``,
    ``covariance_of``) and one dtype: the state in that dtype and, once tried, the factor ``U`` of
    ``Σ = λ₀⁻¹ I − U Uᵀ`` (``None``: Σ has no such low-rank form)."""

    dtype: torch.dtype
    mean_of: torch.Tensor
    covariance_of: torch.Tensor
    mean: torch.Tensor
    bias: torch.Tensor
    covariance: torch.Tensor
    low_rank: torch.Tensor | None = None
    low_rank_tried: bool = False



class LastLayerLaplace:
    """Gaussian posterior over the weights ``W (C, D)`` of a linear head ``z = W φ + b``.

    ``hessian="shared"`` (the paper's): rows ``w_c ~ N(μ_c, Σ)`` with one ``Σ (D, D)``,
    ``Σ⁻¹ = λ₀ I + Σ_i m_i φ_i φ_iᵀ`` and ``m_i`` from ``curvature``. ``hessian="full"``: the
    multi-class GGN with a ``(C·D, C·D)`` covariance over row-major ``vec W``, for small ``C·D``.
    The bias is a point estimate. Covariances are kept in ``dtype`` (float64 by default).

    ``gamma`` is the step size ``γ`` of the mean in :meth:`update` (and of every update simulated on
    this posterior: sequential selection, look-ahead, label corrections); ``steps`` the number of
    Newton steps of an update (``steps > 1`` re-linearises at the new mean: online Laplace, converging
    to the mode of the old posterior × the new likelihood when ``γ = 1``). Both are saved in
    :meth:`state_dict`. The defaults (categorical curvature, ``γ = 1``, 5 steps:
    :data:`~bayesal.laplace.update.FIDELITY_OPTIONS`) track an exact retrain of the same objective;
    ``**PAPER_OPTIONS`` (gaussian curvature, ``γ = 10``, one step) is the paper's update.

    ``prior_precision``: λ₀ as a number, or chosen from the labeled data at :meth:`fit`: ``"cv"``
    (default; 5-fold held-out log-likelihood of the exact MAP head over a grid, see
    :func:`~bayesal.laplace.evidence.cross_validate_prior`), ``"cv-predictive"`` (the same, scoring the
    mean-field Laplace predictive: calibrated probabilities, a stronger prior) or ``"evidence"`` (Laplace marginal
    likelihood, MacKay's fixed point with the GGN curvature, see
    :func:`~bayesal.laplace.evidence.maximize_evidence`). The head is fitted as the exact MAP of the
    same objective (``head_config``, default ``HeadConfig()``: L-BFGS to a gradient tolerance), so the
    closed-form update starts where the old data's gradient vanishes.

    Fitted attributes: ``mean_ (C, D)``, ``bias_ (C,)``, ``covariance_``, ``prior_precision_`` (the λ₀
    in use), ``num_classes_``, ``num_features_``, ``n_updates_`` (points absorbed by :meth:`update` since the last fit). Code
    outside :mod:`bayesal.laplace` uses the public read-only views (:attr:`num_classes`,
    :attr:`covariance`, ...) and the fast paths (:meth:`check_features`, :meth:`logits`,
    :meth:`logit_variance`, :meth:`covariance_product`, :meth:`logit_step`, :meth:`relabel`).
    """

    def __init__(
        self,
        prior_precision: float | str = "cv",
        curvature: str | Curvature = DEFAULT_CURVATURE,
        hessian: str | Hessian = Hessian.SHARED,
        lambda_mf: float = DEFAULT_LAMBDA_MF,
        gamma: float = DEFAULT_GAMMA,
        steps: int = DEFAULT_STEPS,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        head_config: HeadConfig = HeadConfig(),
        random_state: RandomState = None,
        chunk_size: int | None = None,
    ) -> None:
        if isinstance(prior_precision, str):
            if prior_precision not in PRIOR_SELECTIONS:
                raise InvalidInputError(
                    f"prior_precision must be a number, got str {prior_precision!r} (or one of {PRIOR_SELECTIONS} "
                    "to choose it from the labels)"
                )
        else:
            prior_precision = check_scalar(prior_precision, "prior_precision", low=0, low_inclusive=False)
        lambda_mf = check_scalar(lambda_mf, "lambda_mf", low=0)
        dtype = check_dtype(dtype)
        chunk_size = None if chunk_size is None else check_scalar(chunk_size, "chunk_size", integer=True, low=1)
        self.prior_precision = prior_precision if isinstance(prior_precision, str) else float(prior_precision)
        self.curvature = Curvature.parse(curvature)
        self.hessian = Hessian.parse(hessian)
        self.lambda_mf = float(lambda_mf)
        self.gamma = check_gamma(gamma)
        self.steps = check_steps(steps)
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.head_config = head_config
        self.random_state = random_state
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        self._scale_tril: torch.Tensor | None = None
        self._lowp: _MomentOperands | None = None  # logit_moments' operands, keyed by the state tensors

    # ------------------------------------------------------------------ fitting
    def fit(
        self,
        features: Any,
        labels: Any,
        *,
        weight: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        num_classes: int | None = None,
    ) -> LastLayerLaplace:
        """Set the MAP mean and build the covariance from labeled ``features (N, D)``, ``labels (N,)``.

        With ``weight (C, D)`` (and optionally ``bias (C,)``) the given head is the MAP estimate and is
        not refitted: ``prior_precision="evidence"`` then takes the evidence-optimal λ₀ for that head;
        ``"cv"``/``"cv-predictive"`` cannot validate a head they do not fit and use λ₀ = 1, as does any string prior
        without labeled data (pass a number to set λ₀). Otherwise λ₀ is chosen (if a string) and the
        head is fitted with ``head_config`` (seeded by ``random_state`` for the paper's SGD recipe).
        Without ``num_classes`` (or ``weight``) C is inferred from soft labels' width or as the largest
        class index + 1: pass it when the labeled set may lack the last classes.
        """
        x = as_features(features, dtype=self.dtype, device=self.device)
        if weight is not None:
            num_classes = int(weight.shape[0]) if num_classes is None else num_classes
        if num_classes is None:
            num_classes = infer_num_classes(labels)
        c = check_num_classes(num_classes)
        targets = as_targets(labels, c, n=x.shape[0], dtype=self.dtype, device=self.device)
        d = x.shape[1]
        lam = None
        if weight is None:
            if x.shape[0] == 0:
                raise InvalidInputError("cannot train a head without labeled data; pass weight= instead")
            weight, bias, lam = self._fit_head(x, targets, c)
        weight = torch.as_tensor(weight).detach().to(dtype=self.dtype, device=self.device)
        if weight.shape != (c, d):
            raise InvalidInputError(f"weight has shape {tuple(weight.shape)}, expected (C, D) = ({c}, {d})")
        bias = (
            torch.zeros(c, dtype=self.dtype, device=self.device)
            if bias is None
            else torch.as_tensor(bias).detach().to(dtype=self.dtype, device=self.device).reshape(-1)
        )
        if bias.shape != (c,):
            raise InvalidInputError(f"bias has shape {tuple(bias.shape)}, expected ({c},)")
        if not bool(torch.isfinite(weight).all() and torch.isfinite(bias).all()):
            raise InvalidInputError("head weight/bias contain NaN or inf")
        self.mean_, self.bias_ = weight.clone(), bias.clone()
        self.num_classes_, self.num_features_ = c, d
        self.prior_precision_ = self._given_head_precision(x) if lam is None else lam
        self.covariance_ = spd_inverse(self._prior_plus_ggn(x))
        self.n_updates_ = 0
        self._scale_tril = None
        return self

    def _fit_head(self, x: torch.Tensor, targets: torch.Tensor, c: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        """Choose λ₀ (if a string) and fit the head; returns ``(W, b, λ₀)``."""
        cfg = self.head_config
        x64, t64 = x.to(torch.float64), targets.to(torch.float64)
        if self.prior_precision in ("cv", "cv-predictive"):
            # folds from random_state when given, else a fixed seed: the same data give the same λ₀
            gen = None if self.random_state is None else as_generator(self.random_state)
            # "cv-predictive" scores with this posterior's own predictive (categorical for hessian="full")
            curv = self.curvature if self.shared_covariance else Curvature.CATEGORICAL
            sel = cross_validate_prior(x64, t64, head=cfg, generator=gen, predictive=self.prior_precision != "cv",
                                       curvature=curv, lambda_mf=self.lambda_mf)
            lam, head = sel.prior_precision, (sel.weight, sel.bias)
        elif self.prior_precision == "evidence":
            spectrum = self._ggn_spectrum(x64)
            sel = maximize_evidence(x64, t64, spectrum, self._evidence_multiplicity(c), head=cfg)
            lam, head = sel.prior_precision, (sel.weight, sel.bias)
        else:
            lam, head = float(self.prior_precision), None
        if head is None or cfg.solver != "exact":
            head = train_head(x, targets, c, config=cfg, prior_precision=lam, generator=as_generator(self.random_state))
        return head[0].to(self.dtype), head[1].to(self.dtype), lam

    def _evidence_multiplicity(self, c: int) -> int:
        return c if self.shared_covariance else 1

    def _ggn_spectrum(self, x: torch.Tensor) -> Any:
        """Eigenvalues of the data GGN at a head, for the evidence: the categorical shared curvature
        (``hessian="shared"``; the 'gaussian' m = 1 overstates the curvature of a softmax, and its
        evidence prefers the prior alone) or the full multi-class GGN."""

        def spectrum(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            probs = torch.softmax(x @ weight.T + bias, dim=-1)
            if self.shared_covariance:
                u = shared_factor(x, curvature_weights(probs, Curvature.CATEGORICAL))
            else:
                u = full_ggn_factor(x, probs)
            return feature_spectrum(u)[0]

        return spectrum

    def _given_head_precision(self, x: torch.Tensor) -> float:
        """λ₀ for a head passed to :meth:`fit`: the number given, or the evidence-optimal λ₀ for it."""
        if not isinstance(self.prior_precision, str):
            return float(self.prior_precision)
        if self.prior_precision != "evidence" or x.shape[0] == 0:
            return FALLBACK_PRIOR_PRECISION
        x64 = x.to(torch.float64)
        eig = self._ggn_spectrum(x64)(self.mean_.to(torch.float64), self.bias_.to(torch.float64))
        return evidence_fixed_point(
            float(self.mean_.square().sum()), eig, self._evidence_multiplicity(self.num_classes_)
        )

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, features: Any, labels: Any, **kwargs: Any) -> LastLayerLaplace:
        """Laplace posterior around a trained ``torch.nn.Linear`` head (its weights are the MAP)."""
        bias = linear.bias if linear.bias is not None else None
        return cls(**kwargs).fit(features, labels, weight=linear.weight, bias=bias)

    def _prior_plus_ggn(self, x: torch.Tensor) -> torch.Tensor:
        """``λ₀ I + Σ_i H_i`` accumulated over chunks of ``x``."""
        p = self._num_params()
        prec = self.prior_precision_ * torch.eye(p, dtype=self.dtype, device=self.device)
        # a chunk's factor U is (n, D) (shared) or (n·C, C·D) (full)
        for chunk in self._chunks(x, per_row=p * (1 if self.shared_covariance else self.num_classes_)):
            u = self._hessian_factor(chunk, self._point_probs(chunk))
            prec.addmm_(u.T, u)
        return prec

    def _num_params(self) -> int:
        """Side of the covariance: ``D`` (shared) or ``C·D`` (full)."""
        return self.num_features_ * (1 if self.shared_covariance else self.num_classes_)

    def _hessian_factor(self, x: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        if self.shared_covariance:
            return shared_factor(x, curvature_weights(probs, self.curvature))
        return full_ggn_factor(x, probs)

    # -------------------------------------------------------------- predictive
    def _check_fitted(self) -> None:
        if not hasattr(self, "mean_"):
            raise NotFittedError("this LastLayerLaplace is not fitted yet; call fit() first")

    def _features(self, features: Any) -> torch.Tensor:
        self._check_fitted()
        return as_features(features, dim=self.num_features_, dtype=self.dtype, device=self.device)

    def _pool(self, features: Any) -> torch.Tensor:
        """``features`` checked for shape only, in their own dtype/device (no copy of a NumPy pool):
        :meth:`_pool_chunks` converts and checks them chunk by chunk, so scoring a float32 pool never
        holds a float64 copy of all of it."""
        self._check_fitted()
        return as_features(features, dim=self.num_features_, check_finite=False)

    def _pool_chunks(self, x: torch.Tensor, per_row: int | None = None, step: int | None = None) -> Iterator[torch.Tensor]:
        """Chunks of :meth:`_pool` output in ``dtype`` on ``device``, each checked for NaN/inf."""
        start = 0
        for chunk in self._chunks(x, per_row, step):
            yield as_features(chunk, dtype=self.dtype, device=self.device, row_offset=start)
            start += chunk.shape[0]

    def _chunks(self, x: torch.Tensor, per_row: int | None = None, step: int | None = None) -> Iterator[torch.Tensor]:
        """Row blocks of ``x``: ``step`` rows if given, else ``chunk_size`` rows if set, else as many
        as keep a temporary of ``per_row`` elements per row (default ``D + C``) under ``BLOCK_ELEMENTS``."""
        if step is None:
            per_row = per_row or x.shape[1] + getattr(self, "num_classes_", 0)
            step = self.chunk_size or max(1, BLOCK_ELEMENTS // max(1, per_row))
        for start in range(0, x.shape[0], step):
            yield x[start : start + step]

    def _point_probs(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(x @ self.mean_.T + self.bias_, dim=-1)

    # ----------------------------------------------------------- public views
    @property
    def num_classes(self) -> int:
        """Number of classes ``C`` (fitted)."""
        self._check_fitted()
        return self.num_classes_

    @property
    def num_features(self) -> int:
        """Feature dimension ``D`` (fitted)."""
        self._check_fitted()
        return self.num_features_

    @property
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` (or :meth:`from_state_dict`) has set the mean and covariance."""
        return hasattr(self, "mean_")

    @property
    def shared_covariance(self) -> bool:
        """True when the classes share one ``Σ (D, D)`` (``hessian="shared"``): the structure the
        cached-logit fast paths (:meth:`covariance_product`, :meth:`logit_step`) need."""
        return self.hessian is Hessian.SHARED

    @property
    def fitted_prior_precision(self) -> float:
        """The prior precision λ₀ in use: the number given, or the one chosen at :meth:`fit`."""
        self._check_fitted()
        return self.prior_precision_

    @property
    def mean(self) -> torch.Tensor:
        """The posterior mean (MAP head) ``(C, D)``. Read only."""
        self._check_fitted()
        return self.mean_

    @property
    def bias(self) -> torch.Tensor:
        """The head's bias ``(C,)`` (a point estimate). Read only."""
        self._check_fitted()
        return self.bias_

    @property
    def covariance(self) -> torch.Tensor:
        """The weight covariance: ``Σ (D, D)`` (shared) or ``(C·D, C·D)`` over row-major ``vec W`` (full).
        Read only: do not modify the returned tensor."""
        self._check_fitted()
        return self.covariance_

    @property
    def covariance_(self) -> torch.Tensor:
        """``Σ`` as a dense tensor: a downdate that :meth:`update` left pending is applied on first read."""
        # one tuple, read and replaced whole: a concurrent reader sees the old or the new pair, never a mix
        base, pending = self._cov_state
        if pending is None:
            return base
        dense = gram_downdate(base, pending)
        self._cov_state = (dense, None)
        return dense

    @covariance_.setter
    def covariance_(self, value: torch.Tensor) -> None:
        self._cov_state = (value, None)

    def check_features(
        self, features: Any, name: str = "features", dtype: torch.dtype | None = None, check_finite: bool = True
    ) -> torch.Tensor:
        """Validate ``features (N, D)`` once: finite, ``D`` columns, in :attr:`dtype` on :attr:`device`.

        The result can be handed to the fast paths with ``checked=True``, which then skip every check.

        Parameters
        ----------
        features : array-like
            ``(N, D)`` rows (a ``(D,)`` vector is one row).
        name : str
            What to call them in error messages.
        dtype : torch.dtype, optional
            Their dtype instead of :attr:`dtype` (e.g. a float32 pool kept for low-precision products,
            see :meth:`logit_moments`); the fast paths with ``checked=True`` need :attr:`dtype`.
        check_finite : bool
            ``False`` skips the NaN/inf pass over the rows, for a caller that checks them through the
            results of :meth:`logit_moments` (a NaN/inf row gives a non-finite variance).

        Returns
        -------
        torch.Tensor
            ``(N, D)`` in the posterior's (or the given) dtype, on its device.
        """
        self._check_fitted()
        return as_features(features, name=name, dim=self.num_features_, dtype=dtype or self.dtype, device=self.device,
                           check_finite=check_finite)

    def logits(self, features: Any, *, checked: bool = False) -> torch.Tensor:
        """MAP logits ``(N, C)``.

        Parameters
        ----------
        features : array-like
            ``(N, D)``; converted and checked chunk by chunk (a float32 pool is never copied whole).
        checked : bool
            ``features`` come from :meth:`check_features`: skip the checks (fast path).

        Returns
        -------
        torch.Tensor
            ``(N, C)`` in :attr:`dtype`.
        """
        if checked:
            return self._logits(features)
        x = self._pool(features)
        return self._cat([self._logits(ch) for ch in self._pool_chunks(x)], (0, self.num_classes_))

    def _cat(self, parts: list[torch.Tensor], empty_shape: tuple[int, ...]) -> torch.Tensor:
        if not parts:
            return torch.zeros(empty_shape, dtype=self.dtype, device=self.device)
        return torch.cat(parts)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`logits` of already-validated ``x (N, D)`` (no fitted/NaN checks of a large pool)."""
        return x @ self.mean_.T + self.bias_

    def _logit_cov_chunk(self, x: torch.Tensor) -> torch.Tensor:
        """``σ² (n,)`` (shared) or the logit covariance ``(n, C, C)`` (full) of one chunk."""
        if self.shared_covariance:
            return row_quadratic_forms(x, self.covariance_)
        c, d = self.num_classes_, self.num_features_
        cov4 = self.covariance_.view(c, d, c, d)
        return torch.einsum("ncke,ne->nck", torch.einsum("nd,cdke->ncke", x, cov4), x)

    def _per_row_cost(self) -> int:
        """Elements per row of the logit-covariance temporaries: ``x Σ`` or ``(n, C, C, D)``."""
        return self.num_features_ if self.shared_covariance else self.num_classes_**2 * self.num_features_

    def _var_shape(self) -> tuple[int, ...]:
        return (0,) if self.shared_covariance else (0, self.num_classes_, self.num_classes_)

    def logit_variance(self, features: Any, *, checked: bool = False) -> torch.Tensor:
        """Shared: ``σ²(x) = φᵀΣφ`` ``(N,)``. Full: the logit covariance ``(N, C, C)``.

        Parameters
        ----------
        features : array-like
            ``(N, D)``; converted and checked chunk by chunk.
        checked : bool
            ``features`` come from :meth:`check_features`: skip the checks (fast path).

        Returns
        -------
        torch.Tensor
            ``(N,)`` or ``(N, C, C)`` in :attr:`dtype`.
        """
        if checked:
            return self._logit_variance(features)
        x = self._pool(features)
        parts = [self._logit_cov_chunk(ch) for ch in self._pool_chunks(x, self._per_row_cost())]
        return self._cat(parts, self._var_shape())

    def _logit_variance(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`logit_variance` of already-validated ``x (N, D)``."""
        parts = [self._logit_cov_chunk(ch) for ch in self._chunks(x, self._per_row_cost())]
        return self._cat(parts, self._var_shape())

    def logit_moments(self, features: Any, *, compute_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """MAP logits ``(N, C)`` and logit variances ``σ² (N,)`` of one block of rows (shared covariance).

        With ``compute_dtype=torch.float32`` a float32 block is multiplied directly with float32 copies
        of the mean and ``Σ`` (made once per posterior state and cached; the state itself stays in
        :attr:`dtype`): twice the GEMM rate of float64 and no float64 copy of the block, at float32
        round-off (relative ~1e-6 in ``σ²``). The block is checked for NaN/inf through its results (a
        NaN/inf feature makes its row's ``σ²`` NaN/inf, as ``Σ`` is positive definite): ``O(N·C)``
        instead of a pass over the ``(N, D)`` block; a non-finite result is then traced to its rows.

        Parameters
        ----------
        features : array-like
            ``(N, D)`` rows, e.g. one chunk of an out-of-core pool.
        compute_dtype : torch.dtype, optional
            dtype of the products and of the results; ``None`` uses :attr:`dtype`.

        Returns
        -------
        tuple of torch.Tensor
            ``(logits (N, C), variance (N,))`` in ``compute_dtype``.
        """
        self._require_shared("logit_moments")
        dt = self.dtype if compute_dtype is None else compute_dtype
        x = as_features(features, dim=self.num_features_, dtype=dt, device=self.device, check_finite=False)
        ops = getattr(self, "_lowp", None)
        if ops is None or ops.dtype != dt or ops.mean_of is not self.mean_ or ops.covariance_of is not self.covariance_:
            # mean_/covariance_ are replaced (never mutated) by an update, so identity tells staleness
            ops = _MomentOperands(dt, self.mean_, self.covariance_, self.mean_.to(dt), self.bias_.to(dt),
                                  self.covariance_.to(dt))
            self._lowp = ops
        d = self.num_features_
        if not ops.low_rank_tried and x.shape[0] >= LOW_RANK_MIN_ROWS_PER_FEATURE * d:
            # worth one eigendecomposition of Σ per posterior state: Σ = λ₀⁻¹ I − U Uᵀ with few directions
            # seen, then the variances cost O(D·r) per row instead of O(D²)
            u = isotropic_minus_low_rank(self.covariance_, 1.0 / self.prior_precision_, max_rank=d // 2)
            ops.low_rank, ops.low_rank_tried = (None if u is None else u.to(dt)), True
        z = torch.addmm(ops.bias, x, ops.mean.T)
        if ops.low_rank is None:
            var = row_quadratic_forms(x, ops.covariance)
        else:
            var = row_quadratic_forms_low_rank(x, 1.0 / self.prior_precision_, ops.low_rank)
        if not (bool(torch.isfinite(var).all()) and bool(torch.isfinite(z).all())):
            as_features(x)  # names the rows with NaN/inf (or beyond the dtype's safe scale)
            raise NumericalError(
                f"features overflow in {str(dt).replace('torch.', '')} products with the posterior (logit "
                "variances reach inf); rescale the features, or score in the posterior's dtype"
            )
        return z, var

    def covariance_product(self, features: torch.Tensor) -> torch.Tensor:
        """``Φ Σ (N, D)`` (rows ``Σφ_i``) for checked ``features (N, D)`` or ``Σφ (D,)`` for one ``(D,)``.

        Kernels between point sets follow as ``(A Σ) Bᵀ``. Needs the shared covariance.

        Parameters
        ----------
        features : torch.Tensor
            Output of :meth:`check_features` (or a row of it).

        Returns
        -------
        torch.Tensor
            Same shape as ``features``.
        """
        self._require_shared("covariance_product")
        if features.ndim == 1:
            return self.covariance_ @ features
        return features @ self.covariance_

    def logit_step(
        self, phi: torch.Tensor, target: torch.Tensor, *, logits: torch.Tensor | None = None, gamma: float | None = None
    ) -> LogitStep:
        """The rank-1 update with ``(φ, y)`` as a :class:`~bayesal.laplace.update.LogitStep`, to
        refresh cached logits/variances of any point set in ``O(N·D)`` (``step.apply``) without
        re-inference. This posterior is not modified (absorb the point with :meth:`update`).

        Parameters
        ----------
        phi : torch.Tensor
            Checked features of the point ``(D,)``.
        target : torch.Tensor
            Its (possibly soft) label ``(C,)``.
        logits : torch.Tensor, optional
            Cached MAP logits at ``φ`` ``(C,)``; computed when not given.
        gamma : float, optional
            Step size; ``None`` uses :attr:`gamma`.

        Returns
        -------
        LogitStep
        """
        self._require_shared("logit_step")
        z = self._logits(phi.unsqueeze(0))[0] if logits is None else logits
        probs = torch.softmax(z, dim=0)
        gamma = self._step_size(gamma)
        sigma_phi = self.covariance_ @ phi
        if self.steps == 1:
            m = float(curvature_weights(probs.unsqueeze(0), self.curvature)[0])
            return LogitStep(phi, sigma_phi, target, probs, m, gamma)
        # iterated update: the same Newton iteration as update(steps=k), in the point's logit space;
        # ``probs`` is set so that γ (y − probs) / (1 + m φᵀΣφ) is the iterated logit coefficient
        q = float(torch.dot(phi, sigma_phi))
        res = span_newton(z.new_full((1, 1), q), z.unsqueeze(0), target.unsqueeze(0), self.curvature, gamma,
                          self.steps, shared=True)
        coef, m = res.coef[0], float(res.factor[0]) ** 2
        eff = target - coef * (1.0 + m * q) / gamma if gamma > 0 else probs
        return LogitStep(phi, sigma_phi, target, eff, m, gamma)

    def _require_shared(self, what: str) -> None:
        self._check_fitted()
        if not self.shared_covariance:
            raise InvalidInputError(f"{what} needs a posterior with hessian='shared' (covariance I_C ⊗ Σ), not {self.hessian.value!r}")

    def _mc_generator(self, generator: torch.Generator | None) -> torch.Generator | None:
        """The given generator, else one seeded by an int ``random_state`` (reproducible predictive),
        on the posterior's device; ``None`` (global RNG) when neither is set."""
        if generator is not None:
            return generator
        if isinstance(self.random_state, torch.Generator):
            return self.random_state
        if self.random_state is None:
            return None
        return torch.Generator(device=self.device).manual_seed(int(self.random_state))

    def predict_proba(
        self,
        features: Any,
        method: str | Predictive = Predictive.MEAN_FIELD,
        n_samples: int = 1000,
        generator: torch.Generator | None = None,
        lambda_mf: float | None = None,
    ) -> torch.Tensor:
        """Posterior predictive ``(N, C)``: mean-field (default) or Monte Carlo with ``n_samples``.

        Works in chunks of rows so that a large pool never materialises ``(N, D, D)`` or
        ``(K, N, C)`` at once.
        """
        method = Predictive.parse(method, "predictive")
        lam = self.lambda_mf if lambda_mf is None else check_scalar(lambda_mf, "lambda_mf", low=0)
        if method is Predictive.MC:
            n_samples = check_scalar(n_samples, "n_samples", integer=True, low=1)
        x = self._pool(features)
        out = []
        if method is Predictive.MEAN_FIELD:
            for ch in self._pool_chunks(x, self._per_row_cost()):
                var = self._logit_cov_chunk(ch)
                v = var if var.ndim == 1 else centered(var).diagonal(dim1=1, dim2=2)
                out.append(mean_field_probs(self._logits(ch), v, lam))
        else:
            # MC rows come in blocks of a fixed size (not chunk_size), so a seeded result does not
            # depend on the chunking; a block holds about BLOCK_ELEMENTS samples (the strategies'
            # logit_sample_blocks use the same blocks, hence the same draws)
            gen = self._mc_generator(generator)
            step = max(1, BLOCK_ELEMENTS // (n_samples * self.num_classes_))
            for ch in self._pool_chunks(x, step=step):
                scale = logit_scale(self._logit_cov_chunk(ch))
                out.append(mc_probs(self._logits(ch), scale, n_samples, gen))
        return self._cat(out, (0, self.num_classes_))

    def predict(self, features: Any, **kwargs: Any) -> torch.Tensor:
        """Most probable class ``(N,)`` under the predictive."""
        return self.predict_proba(features, **kwargs).argmax(1)

    def sample_logits(self, features: Any, n_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Logit samples ``(K, N, C)`` from the Laplace posterior (for BALD, variation ratio); seeded
        like the Monte Carlo predictive. The logit covariance is computed chunk by chunk."""
        n_samples = check_scalar(n_samples, "n_samples", integer=True, low=1)
        x = self._features(features)
        scale = logit_scale(self._logit_variance(x))
        return mc_logit_samples(self._logits(x), scale, n_samples, self._mc_generator(generator))

    def sample_weights(self, n_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Weight samples ``(K, C, D)`` from ``N(μ, Σ)``."""
        self._check_fitted()
        n_samples = check_scalar(n_samples, "n_samples", integer=True, low=1)
        c, d = self.num_classes_, self.num_features_
        if self.shared_covariance:
            eps = torch.randn(n_samples, c, d, generator=generator, dtype=self.dtype).to(self.device)
            return self.mean_ + eps @ self.scale_tril.T
        eps = torch.randn(n_samples, c * d, generator=generator, dtype=self.dtype).to(self.device)
        return self.mean_ + (eps @ self.scale_tril.T).view(n_samples, c, d)

    @property
    def scale_tril(self) -> torch.Tensor:
        """Lower Cholesky factor of ``covariance_``, computed lazily and cached until the next update."""
        self._check_fitted()
        if self._scale_tril is None:
            self._scale_tril = safe_cholesky(self.covariance_)
        return self._scale_tril

    def precision(self) -> torch.Tensor:
        """``Σ⁻¹`` through the Cholesky factor."""
        return torch.cholesky_inverse(self.scale_tril)

    # ------------------------------------------------------------------ update
    def update(
        self,
        features: Any,
        labels: Any,
        gamma: float | None = None,
        method: str | UpdateMethod = UpdateMethod.WOODBURY,
        inplace: bool = False,
        steps: int | None = None,
    ) -> LastLayerLaplace:
        """Bayesian update with new labeled data ``features (M, D)``, ``labels (M,)`` or soft ``(M, C)``.

        ``Σ' = (Σ⁻¹ + Σ_j H_j)⁻¹`` via the batched Woodbury identity (``method="woodbury"``) or a chain
        of Sherman–Morrison rank-1 steps (``"rank1"``); ``μ' = μ + γ Σ' Σ_j (y_j − p_j) φ_jᵀ`` with
        ``p_j`` at the current mean.

        Parameters
        ----------
        features : array-like
            New labeled features ``(M, D)``.
        labels : array-like
            Class indices ``(M,)`` or soft labels ``(M, C)``.
        gamma : float, optional
            Step size ``γ`` of the mean; ``None`` uses :attr:`gamma`, the posterior's own.
        steps : int, optional
            Newton steps; ``None`` uses :attr:`steps`. ``steps=1`` is the paper's closed form above.
            More steps minimise ``½ δᵀΣ⁻¹δ − γ Σ_j log p(y_j | φ_j, μ + δ)`` by damped Newton with the
            posterior's curvature (online Laplace; with ``γ = 1`` the mode of
            ``N(μ, Σ) × Π_j p(y_j | φ_j, W)``), stopping early once converged. The steps run in the span
            of the new points (:func:`~bayesal.laplace.update.span_newton`): one ``O(M·P²)`` product with
            ``Σ`` before and one downdate after, so extra steps cost ``O(M³)`` each (``O((M·C)³)`` for the
            full GGN), not ``O(P²)``. The covariance uses the curvature of the last linearisation.
        method : {"woodbury", "rank1"}
            How the covariance is downdated (same result). With ``"woodbury"`` and the shared covariance
            the downdate ``Σ' = Σ − HᵀH`` is kept as its factor ``H (M, D)`` and applied when ``Σ'`` is
            first read (by :attr:`covariance`, a predictive variance, a query, :meth:`state_dict`): an
            update whose mean alone is used (:meth:`predict`, accuracy) never pays the ``O(M·D²)`` pass,
            and a chain of updates pays it once; once the pending factors would exceed ``D/4`` rows
            the update applies them itself.
        inplace : bool
            Update this object instead of returning a new one.

        Returns
        -------
        LastLayerLaplace
            The updated posterior (``self`` when ``inplace``).
        """
        method = UpdateMethod.parse(method, "update method")
        gamma = self._step_size(gamma)
        x = self._features(features)
        targets = as_targets(labels, self.num_classes_, n=x.shape[0], dtype=self.dtype, device=self.device)
        # Not in place: a shallow copy suffices, since mean_ and covariance_ are replaced, never mutated.
        target = self if inplace else copy.copy(self)
        if x.shape[0] == 0:
            return target
        steps = self.steps if steps is None else check_steps(steps)
        # every Newton step lives in the span of the new points (see span_newton): one product with Σ
        # before the iteration and one downdate after it, whatever the number of steps
        c, d = self.num_classes_, self.num_features_
        base, pending = self._cov_state
        if self.shared_covariance:
            left = x @ base  # ΦΣ (M, D)
            if pending is not None:  # Σ = base − HᵀH
                left = torch.addmm(left, x @ pending.T, pending, alpha=-1.0)
            kernel = left @ x.T
        else:
            left = torch.einsum("jd,cdq->jcq", x, self.covariance_.reshape(c, d, c * d)).reshape(-1, c * d)  # JΣ
            kernel = torch.einsum("pce,le->plc", left.reshape(-1, c, d), x).reshape(left.shape[0], -1)
        res = span_newton(kernel, torch.addmm(self.bias_, x, self.mean_.T), targets, self.curvature, gamma, steps,
                          self.shared_covariance)
        new_pending = None
        if method is UpdateMethod.WOODBURY and self.shared_covariance:
            # Σ' = Σ − HᵀH with H = L⁻¹FΦΣ (L Lᵀ = I + FKF at span_newton's last linearisation);
            # H joins the pending factor: Σ' itself is formed when first read (mean-only use never pays
            # the O(D²·M) pass, a chain of updates pays it once)
            half = res.whiten @ left
            new_pending = half if pending is None else torch.cat([pending, half])
            cov = base
            if new_pending.shape[0] > PENDING_DOWNDATE_MAX_FRACTION * d:
                cov, new_pending = gram_downdate(base, new_pending), None
        elif method is UpdateMethod.WOODBURY:
            cov = gram_downdate(self.covariance_, res.whiten @ left)
        else:
            cov = rank1_downdate(self.covariance_, self._hessian_factor(x, res.probs))
        if self.shared_covariance:
            mean = torch.addmm(self.mean_, res.coef.T, left)
        else:
            mean = self.mean_ + (res.coef @ left).reshape(c, d)
        target._set_updated(mean, cov, self.n_updates_ + x.shape[0], pending=new_pending)
        return target

    def absorb(self, step: LogitStep) -> LastLayerLaplace:
        """Absorb the point of ``step`` — made by :meth:`logit_step` on this posterior as it is now — in
        place: the posterior :meth:`update` with that point and label gives, without solving its Newton
        iteration again (``O(D² + C·D)``; equal up to round-off).

        With ``s = Σφ``: ``μ' = μ + (γ / d)(y − p̃) ⊗ s`` and ``Σ' = Σ − (m / d) s sᵀ``, ``d = 1 + m φᵀs``
        (``p̃`` the step's probabilities, which carry its Newton iteration).

        Parameters
        ----------
        step : LogitStep
            The step of the point to absorb.

        Returns
        -------
        LastLayerLaplace
            ``self``.
        """
        self._require_shared("absorb")
        d = step.denom
        mean = torch.addr(self.mean_, step.target - step.probs, step.sigma_phi, alpha=step.gamma / d)
        cov = torch.addr(self.covariance_, step.sigma_phi, step.sigma_phi, alpha=-step.curvature / d)
        self._set_updated(mean, cov, self.n_updates_ + 1)
        return self

    def _set_updated(
        self, mean: torch.Tensor, cov: torch.Tensor, n_updates: int, pending: torch.Tensor | None = None
    ) -> None:
        """Replace (never mutate: copies share them) the mean and the covariance ``cov − pendingᵀ pending``
        after an update."""
        diag = cov.diagonal() if pending is None else cov.diagonal() - pending.square().sum(0)
        lo, hi = torch.aminmax(diag)  # NaN propagates into both
        if not (float(lo) > 0 and math.isfinite(float(hi))):
            raise NumericalError("the updated covariance lost positive definiteness; rescale the features "
                                 "(e.g. standardize them) or refit the posterior")
        self.mean_ = mean
        self._cov_state = (cov, pending)
        self.n_updates_ = n_updates
        self._scale_tril = None

    def _step_size(self, gamma: float | None) -> float:
        """The one place an update's options are resolved: ``None`` means the posterior's own."""
        return self.gamma if gamma is None else check_gamma(gamma)

    def with_update_options(self, gamma: float | None = None, steps: int | None = None) -> LastLayerLaplace:
        """A shallow copy whose updates use other options (``None`` keeps this posterior's).

        Parameters
        ----------
        gamma : float, optional
            Step size ``γ`` of the mean.
        steps : int, optional
            Newton steps of an update.

        Returns
        -------
        LastLayerLaplace
            The copy (tensors shared: they are replaced, never modified, by updates).
        """
        out = copy.copy(self)
        if gamma is not None:
            out.gamma = check_gamma(gamma)
        if steps is not None:
            out.steps = check_steps(steps)
        return out

    def relabel(self, features: Any, old: int, new: int, gamma: float | None = None) -> LastLayerLaplace:
        """Posterior after the label of an absorbed point ``features (D,)`` changed from ``old`` to ``new``.

        Swaps the point's likelihood term in one Newton step: ``μ ← μ + γ Σ (e_new − e_old) φᵀ``. The
        covariance is kept (exact for the "gaussian" curvature, whose Hessian does not depend on the
        label).

        Parameters
        ----------
        features : array-like
            The point's features ``(D,)`` or ``(1, D)``.
        old, new : int
            Previous and corrected class index.
        gamma : float, optional
            Step size; ``None`` uses :attr:`gamma`.

        Returns
        -------
        LastLayerLaplace
            A new posterior (this one is not modified).
        """
        phi = self._features(features)
        if phi.shape[0] != 1:
            raise InvalidInputError(f"relabel takes one point (D,), got {phi.shape[0]} rows")
        c = self.num_classes_
        for name, value in (("old", old), ("new", new)):
            if isinstance(value, bool) or int(value) != value or not 0 <= int(value) < c:
                raise InvalidInputError(f"{name} label must be a class index in [0, {c - 1}], got {value!r}")
        out = copy.copy(self)
        out.mean_ = label_correction_step(self.mean_, self.covariance_, phi[0], int(old), int(new),
                                          self._step_size(gamma))
        return out

    def copy(self) -> LastLayerLaplace:
        """Independent copy: tensors cloned, configuration shared (it is immutable)."""
        out = copy.copy(self)
        for name in ("mean_", "bias_", "covariance_", "_scale_tril"):
            value = getattr(self, name, None)
            if isinstance(value, torch.Tensor):
                setattr(out, name, value.clone())
        return out

    # ------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """Plain dict of config and tensors, loadable with :meth:`from_state_dict` (``torch.save``-able)."""
        self._check_fitted()
        return {
            "config": {
                "prior_precision": self.prior_precision,
                "curvature": self.curvature.value,
                "hessian": self.hessian.value,
                "lambda_mf": self.lambda_mf,
                "gamma": self.gamma,
                "steps": self.steps,
                "dtype": str(self.dtype).replace("torch.", ""),
                "chunk_size": self.chunk_size,
            },
            "prior_precision": self.prior_precision_,
            "mean": self.mean_.cpu(),
            "bias": self.bias_.cpu(),
            "covariance": self.covariance_.cpu(),
            "n_updates": self.n_updates_,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device | str | None = None) -> LastLayerLaplace:
        """Rebuild a posterior saved with :meth:`state_dict`; raises ``ValueError`` on malformed state."""
        try:
            cfg = dict(state["config"])
            cfg["dtype"] = getattr(torch, cfg["dtype"])
            cfg.setdefault("steps", 1)  # states written before iterated updates made one step
            post = cls(device=device, **cfg)
            post.mean_ = state["mean"].to(dtype=post.dtype, device=post.device)
            post.bias_ = state["bias"].to(dtype=post.dtype, device=post.device)
            post.covariance_ = state["covariance"].to(dtype=post.dtype, device=post.device)
            post.n_updates_ = int(state["n_updates"])
            # states written before λ₀ could be chosen hold only the configured number
            post.prior_precision_ = float(state.get("prior_precision", cfg["prior_precision"]))
        except (KeyError, TypeError, AttributeError) as err:
            raise CorruptStateError(f"malformed posterior state: {err!r}") from err
        post.num_classes_, post.num_features_ = post.mean_.shape
        p = post._num_params()
        if post.bias_.shape != (post.num_classes_,) or post.covariance_.shape != (p, p):
            raise CorruptStateError("malformed posterior state: tensor shapes do not agree")
        return post

    def __repr__(self) -> str:
        fitted = f", C={self.num_classes_}, D={self.num_features_}" if hasattr(self, "mean_") else ""
        return (
            f"LastLayerLaplace(prior_precision={self.prior_precision}, curvature={self.curvature.value!r}, "
            f"hessian={self.hessian.value!r}, gamma={self.gamma}{fitted})"
        )

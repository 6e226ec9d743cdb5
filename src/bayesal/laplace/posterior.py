"""Last-layer Laplace approximation with closed-form Bayesian updates (docs/method.md §2–4).

:class:`LastLayerLaplace` holds what every covariance structure shares — fitting the head and choosing
λ₀, the predictive, the update's Newton iteration, persistence — and is a factory: ``hessian=`` picks
the subclass of the structure (:mod:`bayesal.laplace.shared`, :mod:`bayesal.laplace.full`, registered
in :mod:`bayesal.laplace.structures`), which holds the covariance's own algebra: its Hessian factor,
logit covariances, the update's products and downdate, and the mean step.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import torch

from bayesal.exceptions import InvalidInputError, NotFittedError
from bayesal.utils import RandomState, as_features, check_dtype, check_scalar

from .fitting import HeadFitting
from .head import HeadConfig
from .linalg import safe_cholesky
from .options import BLOCK_ELEMENTS, Curvature, Predictive, PriorSelection, SpreadSelection, check_prior_precision
from .pending import PendingMean, dense_mean, pending_logits
from .persistence import Persistence
from .predictive import (
    DEFAULT_LAMBDA_MF,
    centered,
    logit_scale,
    mc_logit_samples,
    mc_probs,
    mean_field_probs,
    tempered,
)
from .structures import structure_class
from .update import (
    DEFAULT_CURVATURE,
    DEFAULT_GAMMA,
    DEFAULT_STEPS,
    check_gamma,
    check_steps,
    gram_downdate,
)
from .updating import DEFAULT_EXACT_UNTIL, NewtonUpdating

__all__ = ["LastLayerLaplace"]

DEFAULT_STRUCTURE = "shared"


class LastLayerLaplace(HeadFitting, NewtonUpdating, Persistence):
    """Gaussian posterior over the weights ``W (C, D)`` of a linear head ``z = W φ + b``.

    ``hessian`` names the covariance structure, and ``LastLayerLaplace(...)`` returns an instance of its
    subclass: ``"shared"`` (the paper's, :class:`~bayesal.laplace.shared.SharedLaplace`): rows
    ``w_c ~ N(μ_c, Σ)`` with one ``Σ (D, D)``, ``Σ⁻¹ = λ₀ I + Σ_i m_i φ_i φ_iᵀ`` and ``m_i`` from
    ``curvature``; ``"full"`` (:class:`~bayesal.laplace.full.FullLaplace`): the multi-class GGN with a
    ``(C·D, C·D)`` covariance over row-major ``vec W``, for small ``C·D``. The bias is a point estimate.
    Covariances are kept in ``dtype`` (float64 by default).

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

    ``prior_mean``: the mean ``M₀ (C, D)`` of the Gaussian prior ``N(M₀, λ₀⁻¹ I)`` on the weights (None:
    zero), e.g. a zero-shot head made of class-name embeddings. Every fit is the MAP of
    ``NLL + λ₀/2 ‖W − M₀‖²``, the evidence and the cross-validation of λ₀ use that prior, and a fit without
    labels is the prior itself: mean ``M₀``, so the predictive at zero labels is the zero-shot guess.
    The update needs nothing more (the prior is inside the posterior it starts from).

    Fitted attributes: ``mean_ (C, D)``, ``bias_ (C,)``, ``covariance_``, ``prior_precision_`` (the λ₀
    in use), ``num_classes_``, ``num_features_``, ``n_updates_`` (points absorbed by :meth:`update` since the last fit). Code
    outside :mod:`bayesal.laplace` uses the public read-only views (:attr:`num_classes`,
    :attr:`covariance`, ...) and the fast paths (:meth:`check_features`, :meth:`logits`,
    :meth:`logit_variance`, and those of the shared covariance).
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> LastLayerLaplace:
        # the factory: the base class builds the subclass its ``hessian`` names (positional: third)
        name = kwargs.get("hessian", args[2] if len(args) > 2 else None)
        if cls is LastLayerLaplace:
            cls = structure_class(DEFAULT_STRUCTURE if name is None else name)
        elif name is not None and structure_class(name) is not cls:
            raise InvalidInputError(f"{cls.__name__} is the {cls.structure!r} structure, got hessian={name!r}")
        return super().__new__(cls)

    def __init__(
        self,
        prior_precision: float | str = "cv",
        curvature: str | Curvature = DEFAULT_CURVATURE,
        hessian: str | None = None,
        lambda_mf: float = DEFAULT_LAMBDA_MF,
        gamma: float = DEFAULT_GAMMA,
        steps: int = DEFAULT_STEPS,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str | None = None,
        head_config: HeadConfig = HeadConfig(),
        random_state: RandomState = None,
        chunk_size: int | None = None,
        spread: float | str = "cv",
        exact_until: int = DEFAULT_EXACT_UNTIL,
        prior_mean: Any = None,
    ) -> None:
        prior_precision = check_prior_precision(prior_precision)
        if isinstance(spread, str):
            spread = SpreadSelection.parse(spread, "spread").value  # kept as a plain str, as prior_precision
        else:
            spread = float(check_scalar(spread, "spread", low=0))
        lambda_mf = check_scalar(lambda_mf, "lambda_mf", low=0)
        exact_until = int(check_scalar(exact_until, "exact_until", integer=True, low=0))
        dtype = check_dtype(dtype)
        chunk_size = None if chunk_size is None else check_scalar(chunk_size, "chunk_size", integer=True, low=1)
        # a plain str in the posterior: its state_dict stays loadable with torch.load(weights_only=True)
        self.prior_precision = prior_precision.value if isinstance(prior_precision, PriorSelection) else prior_precision
        self.spread = spread
        self.exact_until = exact_until
        self.curvature = Curvature.parse(curvature)
        self.lambda_mf = float(lambda_mf)
        self.gamma = check_gamma(gamma)
        self.steps = check_steps(steps)
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.head_config = head_config
        self.random_state = random_state
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        self.prior_mean = _check_prior_mean(prior_mean, dtype, self.device)
        self._scale_tril: torch.Tensor | None = None
        self._retained = None

    @property
    def hessian(self) -> str:
        """Name of the covariance structure (``"shared"``, ``"full"``, or a registered one)."""
        return self.structure

    # -------------------------------------------------------------- predictive
    def _check_fitted(self) -> None:
        if not hasattr(self, "_mean_state"):
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
        return hasattr(self, "_mean_state")

    @property
    def fitted_spread(self) -> float:
        """The spread ``τ`` of the predictive in use (logit variances ``τ σ²``): the number given, or the
        one chosen at :meth:`fit` (see :mod:`bayesal.laplace.spread`)."""
        self._check_fitted()
        return self.spread_

    @property
    def fitted_temperature(self) -> float:
        """The temperature ``T`` of the predictive's likelihood ``softmax(z / T)``: chosen with the spread
        at :meth:`fit` when the spread is ``"cv"``, else 1 (see :mod:`bayesal.laplace.spread`)."""
        self._check_fitted()
        return self.temperature_

    def with_spread(self, spread: float, temperature: float = 1.0) -> LastLayerLaplace:
        """A shallow copy whose predictive uses the spread ``τ = spread`` and the likelihood temperature
        ``T = temperature`` (``τ = 1, T = 1``: the plain Laplace predictive; ``τ = 0, T = 1``: the MAP
        softmax); the mean, the covariance and updates are unchanged."""
        self._check_fitted()
        out = copy.copy(self)
        out.spread_ = float(check_scalar(spread, "spread", low=0))
        out.temperature_ = _check_temperature(temperature)
        return out

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
    def mean_(self) -> torch.Tensor:
        """``μ`` as a dense tensor: a correction that :meth:`update` left pending is applied on first read
        (see :mod:`bayesal.laplace.pending`)."""
        # one object, read and replaced whole: a concurrent reader sees the old or the new one
        state = self._mean_state
        if isinstance(state, torch.Tensor):
            return state
        dense = dense_mean(state)
        self._mean_state = dense
        return dense

    @mean_.setter
    def mean_(self, value: torch.Tensor | PendingMean) -> None:
        self._mean_state = value

    def _new_point_logits(self, x: torch.Tensor) -> torch.Tensor:
        """MAP logits ``(M, C)`` of an update's new rows ``x (M, D)``, leaving a pending mean pending."""
        return pending_logits(self.bias_, x, self._mean_state)

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
        out = torch.empty(x.shape[0], self.num_classes_, dtype=self.dtype, device=self.device)
        start = 0
        for ch in self._pool_chunks(x):
            out[start : start + ch.shape[0]] = self._logits(ch)
            start += ch.shape[0]
        return out

    def _cat(self, parts: list[torch.Tensor], empty_shape: tuple[int, ...]) -> torch.Tensor:
        if not parts:
            return torch.zeros(empty_shape, dtype=self.dtype, device=self.device)
        return torch.cat(parts)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`logits` of already-validated ``x (N, D)`` (no fitted/NaN checks of a large pool)."""
        return x @ self.mean_.T + self.bias_

    def logit_variance(self, features: Any, *, checked: bool = False) -> torch.Tensor:
        """The predictive's logit variance: shared ``τ σ²(x) = τ φᵀΣφ`` ``(N,)``; full: ``τ`` times the logit
        covariance ``(N, C, C)`` (``τ`` the spread, :attr:`fitted_spread`).

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
        parts = [self._predictive_cov(ch) for ch in self._pool_chunks(x, self._per_row_cost())]
        return self._cat(parts, self._var_shape())

    def _logit_variance(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`logit_variance` of already-validated ``x (N, D)``."""
        parts = [self._predictive_cov(ch) for ch in self._chunks(x, self._per_row_cost())]
        return self._cat(parts, self._var_shape())

    def _predictive_cov(self, x: torch.Tensor) -> torch.Tensor:
        """The predictive's logit (co)variance of one chunk: the structure's, times the spread ``τ``."""
        cov = self._logit_cov_chunk(x)
        return cov if self.spread_ == 1.0 else cov.mul_(self.spread_)

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
        """Posterior predictive ``(N, C)``: mean-field (default) or Monte Carlo with ``n_samples``, of the
        likelihood ``softmax(z / T)`` under the tempered posterior's logits ``z ~ N(μ(x), τ σ²(x))``
        (:attr:`fitted_spread` ``τ``, :attr:`fitted_temperature` ``T``).

        Works in chunks of rows so that a large pool never materialises ``(N, D, D)`` or
        ``(K, N, C)`` at once.
        """
        method = Predictive.parse(method, "predictive")
        lam = self.lambda_mf if lambda_mf is None else check_scalar(lambda_mf, "lambda_mf", low=0)
        if method is Predictive.MC:
            n_samples = check_scalar(n_samples, "n_samples", integer=True, low=1)
        x = self._pool(features)
        # written into one (N, C) result chunk by chunk: with many classes the result is the largest
        # object, and a list of chunks joined at the end would hold it twice
        out = torch.empty(x.shape[0], self.num_classes_, dtype=self.dtype, device=self.device)
        start = 0
        if method is Predictive.MEAN_FIELD:
            for ch in self._pool_chunks(x, self._per_row_cost()):
                var = self._predictive_cov(ch)
                v = var if var.ndim == 1 else centered(var).diagonal(dim1=1, dim2=2)
                out[start : start + ch.shape[0]] = mean_field_probs(self._logits(ch), v, lam, self.temperature_)
                start += ch.shape[0]
        else:
            # MC rows come in blocks of a fixed size (not chunk_size), so a seeded result does not
            # depend on the chunking; a block holds about BLOCK_ELEMENTS samples (the strategies'
            # logit_sample_blocks use the same blocks, hence the same draws)
            gen = self._mc_generator(generator)
            step = max(1, BLOCK_ELEMENTS // (n_samples * self.num_classes_))
            for ch in self._pool_chunks(x, step=step):
                scale = logit_scale(self._predictive_cov(ch))
                out[start : start + ch.shape[0]] = mc_probs(self._logits(ch), scale, n_samples, gen, self.temperature_)
                start += ch.shape[0]
        return out

    def predict(self, features: Any, **kwargs: Any) -> torch.Tensor:
        """Most probable class ``(N,)`` under the predictive."""
        return self.predict_proba(features, **kwargs).argmax(1)

    def sample_logits(self, features: Any, n_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Logit samples ``(K, N, C)`` of the predictive's likelihood, ``z / T`` with ``z ~ N(μ(x), τ σ²(x))``
        (for BALD, variation ratio); seeded like the Monte Carlo predictive. The logit covariance is
        computed chunk by chunk."""
        n_samples = check_scalar(n_samples, "n_samples", integer=True, low=1)
        x = self._features(features)
        scale = logit_scale(self._logit_variance(x))
        return tempered(mc_logit_samples(self._logits(x), scale, n_samples, self._mc_generator(generator)),
                        self.temperature_)

    def _sample_count(self, n_samples: int) -> int:
        """``n_samples`` checked (an integer ≥ 1) on a fitted posterior."""
        self._check_fitted()
        return int(check_scalar(n_samples, "n_samples", integer=True, low=1))

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

    def __repr__(self) -> str:
        fitted = f", C={self.num_classes_}, D={self.num_features_}" if hasattr(self, "_mean_state") else ""
        mean = "" if self.prior_mean is None else f", prior_mean=<{tuple(self.prior_mean.shape)}>"
        chosen = (f", λ₀={self.prior_precision_:.3g}, τ={self.spread_:.3g}, T={self.temperature_:.3g}"
                  if hasattr(self, "_mean_state") else "")
        return (
            f"LastLayerLaplace(prior_precision={self.prior_precision}, curvature={self.curvature.value!r}, "
            f"hessian={str(self.hessian)!r}, gamma={self.gamma}, spread={self.spread}{mean}{fitted}{chosen})"
        )


def _check_temperature(temperature: Any) -> float:
    """A likelihood temperature: a finite number > 0."""
    t = float(check_scalar(temperature, "temperature", low=0))
    if not t > 0:
        raise InvalidInputError(f"temperature must be > 0, got {temperature!r}")
    return t


def _check_prior_mean(prior_mean: Any, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """The prior mean ``M₀`` as a finite ``(C, D)`` tensor in the posterior's dtype and device (or None);
    its shape is checked against the data at :meth:`LastLayerLaplace.fit`."""
    if prior_mean is None:
        return None
    try:
        m0 = torch.as_tensor(prior_mean).detach().to(dtype=dtype, device=device).clone()
    except (TypeError, ValueError, RuntimeError) as err:
        raise InvalidInputError(f"prior_mean must be a (C, D) array of numbers: {err}") from err
    if m0.ndim != 2:
        raise InvalidInputError(f"prior_mean must be a (C, D) array, got shape {tuple(m0.shape)}")
    if not bool(torch.isfinite(m0).all()):
        raise InvalidInputError("prior_mean contains NaN or inf")
    return m0

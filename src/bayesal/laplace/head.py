"""The linear head ``z = W φ + b`` on frozen features: its exact MAP fit, and the paper's SGD recipe.

The posterior describes the negative log joint

    f(W, b) = Σ_i CE(y_i, softmax(W φ_i + b)) + λ₀/2 ‖W − M₀‖² + λ_b/2 ‖b‖²

(summed loss, prior precision λ₀ on W around the prior mean ``M₀``: zero unless given, e.g. a zero-shot
head from class-name embeddings). It is convex, so the head the posterior is built around must
be its minimiser: the closed-form update is a Newton step only from a point where the gradient of the
old data's objective vanishes. ``solver="exact"`` (default) minimises ``f`` with L-BFGS in float64 to a
gradient-norm tolerance, warm-started from ``init``. ``HeadConfig.paper()`` is the paper's recipe
(200 epochs RAdam, lr 1e-2, weight decay 1e-4 on the *mean* loss, cosine, batch 64), kept to reproduce
its numbers; its result is not the optimum of ``f`` for any λ₀ in general.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize

from bayesal.exceptions import InvalidInputError
from bayesal.utils import as_features, as_targets, blas_threads, check_num_classes, check_scalar

from .linalg import feature_spectrum
from .options import HeadSolver

__all__ = ["HeadConfig", "HeadFit", "ConvergenceWarning", "map_objective", "fit_map_head", "train_head"]


class ConvergenceWarning(UserWarning):
    """The exact head solver stopped at ``max_iter`` before reaching its gradient tolerance."""


@dataclass(frozen=True)
class HeadConfig:
    """How the head is fitted.

    ``solver="exact"`` (default): L-BFGS on the MAP objective with the posterior's prior precision,
    stopped when ``‖∇f‖₂ ≤ tol · ‖∇f(0, 0)‖₂`` (relative to the gradient at a zero head) or after
    ``max_iter`` iterations; ``bias_precision`` is the (weak) Gaussian prior on the bias, which keeps
    the bias of a class without labels finite. ``solver="radam"``: the paper's recipe with ``epochs``,
    ``lr``, ``weight_decay`` (on the mean loss) and ``batch_size``; :meth:`paper` builds it.
    ``solver`` is a :class:`~bayesal.laplace.options.HeadSolver` or its string; it is kept as the plain
    string, so ``dataclasses.asdict`` of a config saves and reloads as it is.
    """

    solver: str = HeadSolver.EXACT.value
    tol: float = 1e-5
    max_iter: int = 1000
    bias_precision: float = 1e-4
    epochs: int = 200
    lr: float = 1e-2
    weight_decay: float = 1e-4
    batch_size: int = 64

    def __post_init__(self) -> None:
        object.__setattr__(self, "solver", HeadSolver.parse(self.solver, "head solver").value)
        if not (self.tol > 0 and math.isfinite(self.tol)) or self.max_iter < 1:
            raise InvalidInputError(f"HeadConfig needs tol > 0 and max_iter >= 1, got {self.tol}, {self.max_iter}")
        if not (self.bias_precision >= 0 and math.isfinite(self.bias_precision)):
            raise InvalidInputError(f"HeadConfig.bias_precision must be >= 0, got {self.bias_precision}")
        check_scalar(self.epochs, "epochs", integer=True, low=0)
        check_scalar(self.lr, "lr", low=0, low_inclusive=False)
        check_scalar(self.weight_decay, "weight_decay", low=0)
        check_scalar(self.batch_size, "batch_size", integer=True, low=1)
        check_scalar(self.max_iter, "max_iter", integer=True, low=1)

    @classmethod
    def paper(cls, **overrides: Any) -> HeadConfig:
        """The paper's recipe: 200 epochs RAdam, lr 1e-2, weight decay 1e-4, cosine, batch 64."""
        return replace(cls(solver=HeadSolver.RADAM.value), **overrides)


class HeadFit(NamedTuple):
    """Result of :func:`fit_map_head`: ``weight (C, D)``, ``bias (C,)``, the final ``‖∇f‖₂``, the
    number of L-BFGS iterations and whether the tolerance was reached."""

    weight: torch.Tensor
    bias: torch.Tensor
    grad_norm: float
    n_iter: int
    converged: bool


def map_objective(
    x: torch.Tensor,
    targets: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    prior_precision: float | torch.Tensor,
    bias_precision: float = 0.0,
    prior_mean: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``f(W, b)`` and its gradients ``(C, D)``, ``(C,)`` for ``x (N, D)`` and ``targets (N, C)``
    (one-hot or soft rows), in closed form: ``∇_W f = (P − Y)ᵀ Φ + λ₀ (W − M₀)``. ``prior_precision`` is a
    number or a per-column ``(D,)`` tensor (a prior written in other coordinates); ``prior_mean`` is
    ``M₀ (C, D)`` (None: zero)."""
    return _shifted_objective(x, targets, weight if prior_mean is None else weight - prior_mean, bias,
                              prior_precision, bias_precision, None if prior_mean is None else x @ prior_mean.T)


def _shifted_objective(
    x: torch.Tensor, targets: torch.Tensor, delta: torch.Tensor, bias: torch.Tensor,
    prior_precision: float | torch.Tensor, bias_precision: float, offset: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`map_objective` in the shifted parameter ``Δ = W − M₀``: logits ``Φ Δᵀ + b + offset`` with
    ``offset = Φ M₀ᵀ (N, C)`` (None: zero) and the prior ``λ₀/2 ‖Δ‖²``; gradients with respect to ``Δ, b``."""
    z = torch.addmm(bias, x, delta.T)
    if offset is not None:
        z = z + offset
    lse = torch.logsumexp(z, 1)
    reg = prior_precision * delta
    value = (lse - (targets * z).sum(1)).sum() + 0.5 * (reg * delta).sum() + 0.5 * bias_precision * bias.square().sum()
    resid = torch.exp(z - lse.unsqueeze(1)) - targets  # P − Y
    grad_w = torch.addmm(reg, resid.T, x)
    grad_b = resid.sum(0) + bias_precision * bias
    return value, grad_w, grad_b


#: Preconditioner ``(λ₀ I + s ΦᵀΦ)^{-1/2}``: the softmax curvature ``diag p − p pᵀ`` is at most 1/2 but
#: far smaller on confidently fitted points; ``s = 0.01`` was the fastest of 0…0.25 on the built-in data.
PRECONDITIONER_SCALE = 0.01

#: Float64 elements L-BFGS-B's workspace may take (1 GiB): it keeps ``(2m + 5)`` vectors of the
#: ``C·r + C`` parameters for a history of ``m``, 2.8 GiB at ``C = 10,000``, ``D = 768`` and ``m = 20``.
#: A head with that many parameters gets a shorter history instead (never below
#: :data:`MIN_HISTORY_SIZE`), so the fit stays within memory ``O(C·D)`` of a modest constant.
LBFGS_WORKSPACE_ELEMENTS = 1 << 27
#: Shortest L-BFGS history the workspace bound may leave.
MIN_HISTORY_SIZE = 5


def lbfgs_history_size(num_params: int, requested: int) -> int:
    """The L-BFGS history for ``num_params`` parameters: ``requested``, shortened so that the solver's
    ``(2m + 5) · num_params`` workspace stays under :data:`LBFGS_WORKSPACE_ELEMENTS` (at least
    :data:`MIN_HISTORY_SIZE`, or ``requested`` if that is smaller)."""
    fits = (LBFGS_WORKSPACE_ELEMENTS // max(1, num_params) - 5) // 2
    return min(requested, max(MIN_HISTORY_SIZE, fits))


Objective = Callable[[np.ndarray], tuple[float, np.ndarray]]


def _objective_on_cpu(
    xt: torch.Tensor, t: torch.Tensor, prior: torch.Tensor, scale: torch.Tensor, bias_precision: float,
    last: dict[str, float], offset: torch.Tensor | None = None,
) -> Objective:
    """:func:`map_objective` of the whitened problem on flat parameters ``θ = [vec W̃, b]``, in NumPy
    (``W̃`` the whitened shift from the prior mean, whose logits ``offset (N, C)`` are added).

    The same formula as :func:`map_objective` (tested equal); a solver iteration on a small labeled
    set is a few microsecond-sized array operations, where NumPy's per-call cost is several times
    below torch's. Stores ``‖∇f‖₂`` in the original coordinates in ``last["norm"]``.
    """
    x, y = xt.double().numpy(), t.double().numpy()
    pr, inv_s = prior.double().numpy(), 1.0 / scale.double().numpy()
    off = None if offset is None else offset.double().numpy()
    c, r = y.shape[1], x.shape[1]

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[: c * r].reshape(c, r), theta[c * r :]
        z = x @ w.T + b
        if off is not None:
            z += off
        zmax = z.max(1, keepdims=True)
        ez = np.exp(z - zmax)
        sz = ez.sum(1, keepdims=True)
        lse = np.log(sz[:, 0]) + zmax[:, 0]
        reg = pr * w
        value = float((lse - (y * z).sum(1)).sum() + 0.5 * (reg * w).sum() + 0.5 * bias_precision * (b @ b))
        resid = ez / sz - y  # P − Y
        gw = resid.T @ x + reg
        gb = resid.sum(0) + bias_precision * b
        # ∇_W f = ∇_W̃ f diag(1/s) Vᵀ (zero off the span of V), so its norm is that of ∇_W̃ f / s
        last["norm"] = math.sqrt(float(((gw * inv_s) ** 2).sum() + gb @ gb))
        return value, np.concatenate([gw.ravel(), gb])

    return objective


def _objective_in_torch(
    xt: torch.Tensor, t: torch.Tensor, prior: torch.Tensor, scale: torch.Tensor, bias_precision: float,
    last: dict[str, float], offset: torch.Tensor | None = None,
) -> Objective:
    """:func:`_objective_on_cpu` for features on another device: :func:`map_objective` where they are."""
    c, r = t.shape[1], xt.shape[1]

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        th = torch.from_numpy(theta).to(xt)
        value, gw, gb = _shifted_objective(xt, t, th[: c * r].view(c, r), th[c * r :], prior, bias_precision, offset)
        last["norm"] = math.sqrt(float((gw / scale).square().sum() + gb.square().sum()))
        return float(value), torch.cat([gw.reshape(-1), gb]).to("cpu", torch.float64).numpy()

    return objective


def fit_map_head(
    features: torch.Tensor,
    targets: torch.Tensor,
    prior_precision: float,
    *,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    tol: float = 1e-5,
    max_iter: int = 1000,
    bias_precision: float = 1e-4,
    spectrum: tuple[torch.Tensor, torch.Tensor] | None = None,
    history_size: int = 20,
    precond: float = PRECONDITIONER_SCALE,
    prior_mean: torch.Tensor | None = None,
) -> HeadFit:
    """Minimise :func:`map_objective` with preconditioned L-BFGS (scipy's L-BFGS-B, strong-Wolfe line search).

    ``features (N, D)`` floating point (float64 recommended), ``targets (N, C)`` one-hot or soft.
    Warm-started from ``init=(W, b)`` (zeros otherwise). The problem is solved in the coordinates
    ``W = W̃ (λ₀ + s e)^{-1/2} Vᵀ`` with ``(e, V)`` the eigenpairs of ``ΦᵀΦ`` (``spectrum``, computed by
    :func:`~bayesal.laplace.linalg.feature_spectrum` when not given; pass it to reuse one
    eigendecomposition for several λ₀), where the Hessian is well conditioned whatever the feature
    scale; for ``N < D`` the optimum lies in the span of the features, so only that span is searched.
    Stops when ``‖∇f‖₂ ≤ tol · ‖∇f(0, 0)‖₂`` (in the original coordinates, the prior term counted only
    with a prior mean, where it is ``−λ₀ M₀``; the reference makes ``tol``
    independent of the number of points and the feature scale); warns with
    :class:`ConvergenceWarning` if ``max_iter`` iterations did not get there.

    ``prior_mean`` ``M₀ (C, D)`` centres the prior (None: zero). The problem is then solved in the
    shift ``Δ = W − M₀``, whose objective is the zero-mean one with the logits offset by ``Φ M₀ᵀ``: the
    same whitening applies, and its optimum lies in the span of the features again.
    """
    if not (prior_precision > 0 and math.isfinite(prior_precision)):
        raise InvalidInputError(f"prior_precision must be a positive number, got {prior_precision}")
    x, t = features, targets.to(features)
    c = t.shape[1]
    e, v = feature_spectrum(x) if spectrum is None else spectrum
    e, v = e.to(x), v.to(x)
    scale = (prior_precision + precond * e).rsqrt()  # (r,)
    xt = (x @ v) * scale  # whitened features (N, r)
    prior = prior_precision * scale.square()  # λ₀ ‖W − M₀‖² = Σ_k λ₀ s_k² W̃_k²
    m0 = None if prior_mean is None else _checked_mean(prior_mean, c, x)
    offset = None if m0 is None else x @ m0.T  # logits of the prior mean (N, C)
    if init is None:
        w = torch.zeros(c, v.shape[1], dtype=x.dtype, device=x.device)
        b = torch.zeros(c, dtype=x.dtype, device=x.device)
    else:
        w0 = init[0].detach().to(x)
        w = ((w0 if m0 is None else w0 - m0) @ v) / scale
        b = init[1].detach().to(x).clone()
    with torch.no_grad():  # scale of the problem: the gradient at W = 0, b = 0 (its prior term with a prior mean)
        _, g0w, g0b = map_objective(x, t, x.new_zeros(c, x.shape[1]), x.new_zeros(c), 0.0 if m0 is None else prior_precision,
                                    prior_mean=m0)
    target_norm = tol * max(math.sqrt(float(g0w.square().sum() + g0b.square().sum())), torch.finfo(x.dtype).tiny)
    n_w = w.numel()
    last: dict[str, float] = {}

    objective = _objective_on_cpu(xt, t, prior, scale, bias_precision, last, offset) if x.device.type == "cpu" else \
        _objective_in_torch(xt, t, prior, scale, bias_precision, last, offset)

    def stop_at_tolerance(intermediate_result: object) -> None:
        # L-BFGS-B's own tests are on the max-abs projected gradient and the relative decrease in the
        # whitened coordinates; the contract is the 2-norm of the gradient in the original ones
        if last["norm"] <= target_norm:
            raise StopIteration

    theta0 = torch.cat([w.reshape(-1), b]).to("cpu", torch.float64).numpy()
    objective(theta0)
    n_iter = 0
    theta = theta0
    if last["norm"] > target_norm:
        # scipy's compiled L-BFGS-B: per iteration only the objective runs in Python (a handful of
        # array operations). One BLAS thread: two were 3–4x slower on the built-in data sets (up to
        # 1000 x 784 features), where each product is too short to share
        history = lbfgs_history_size(theta0.size, history_size)
        with blas_threads(1):
            res = minimize(
                objective, theta0, jac=True, method="L-BFGS-B", callback=stop_at_tolerance,
                options={"maxiter": max_iter, "maxcor": history, "gtol": 0.0, "ftol": 0.0, "maxls": 50},
            )
        theta, n_iter = res.x, int(res.nit)
        objective(theta)  # the norm at the returned point (the last evaluation may be a line-search trial)
    th = torch.from_numpy(theta).to(x)
    w, b = th[:n_w].view_as(w), th[n_w:]
    converged = last["norm"] <= target_norm
    if not converged:
        warnings.warn(
            f"exact head fit stopped after {n_iter} L-BFGS iterations with gradient norm {last['norm']:.2e} "
            f"> {target_norm:.2e} (tol {tol:g} relative); raise HeadConfig.max_iter or tol",
            ConvergenceWarning,
            stacklevel=2,
        )
    weight = (w * scale) @ v.T
    if m0 is not None:
        weight = weight + m0
    return HeadFit(weight, b.clone(), last["norm"], n_iter, converged)


def _checked_mean(prior_mean: torch.Tensor, c: int, x: torch.Tensor) -> torch.Tensor:
    """``prior_mean`` as ``(C, D)`` in the features' dtype and device, checked."""
    m0 = torch.as_tensor(prior_mean).detach().to(x)
    if m0.shape != (c, x.shape[1]):
        raise InvalidInputError(f"prior_mean has shape {tuple(m0.shape)}, expected (C, D) = ({c}, {x.shape[1]})")
    if not bool(torch.isfinite(m0).all()):
        raise InvalidInputError("prior_mean contains NaN or inf")
    return m0


def train_head(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    config: HeadConfig = HeadConfig(),
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
    prior_precision: float = 1.0,
    prior_mean: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit ``W (C, D)`` and ``b (C,)`` on ``features (N, D)``, ``labels (N,)`` (or soft ``(N, C)``).

    ``config.solver="exact"``: the MAP head for ``prior_precision`` and ``prior_mean`` ``M₀ (C, D)`` (see
    :func:`fit_map_head`), computed in float64. ``"radam"``: the paper's mini-batch recipe (integer
    labels), mini-batches drawn with ``generator``; it has no prior of its own (its weight decay pulls
    towards zero), so a prior mean only sets its starting point when ``init`` is not given.
    ``init=(W, b)`` warm-starts / fine-tunes from those weights instead of zeros (or ``M₀``).
    Returned tensors are detached, in the features' dtype.
    """
    num_classes = check_num_classes(num_classes)
    x = as_features(features)
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    n, d = x.shape
    if n == 0:
        raise InvalidInputError("cannot train the head on an empty labeled set; label some points first")
    targets = as_targets(labels, num_classes, n=n, dtype=torch.float64, device=x.device)
    if config.solver == HeadSolver.EXACT:
        fit = fit_map_head(
            x.double(), targets, prior_precision, init=init, tol=config.tol, max_iter=config.max_iter,
            bias_precision=config.bias_precision, prior_mean=prior_mean,
        )
        return fit.weight.to(x.dtype), fit.bias.to(x.dtype)
    y = targets.argmax(1)
    if init is None:
        w0 = torch.zeros(num_classes, d, dtype=x.dtype, device=x.device) if prior_mean is None else \
            _checked_mean(prior_mean, num_classes, x)
        b0 = torch.zeros(num_classes, dtype=x.dtype, device=x.device)
    else:
        w0 = init[0].detach().to(x)
        b0 = init[1].detach().to(x)
    weight = w0.clone().requires_grad_(True)
    bias = b0.clone().requires_grad_(True)
    opt = torch.optim.RAdam([weight, bias], lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = -(-n // config.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, config.epochs * steps_per_epoch))
    for _ in range(config.epochs):
        order = torch.randperm(n, generator=generator).to(x.device)
        for start in range(0, n, config.batch_size):
            idx = order[start : start + config.batch_size]
            loss = F.cross_entropy(F.linear(x[idx], weight, bias), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return weight.detach(), bias.detach()

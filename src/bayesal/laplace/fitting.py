"""Fitting a last-layer posterior: choosing λ₀ and the MAP head, then the covariance (docs/method.md §2)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

from bayesal.exceptions import InvalidInputError
from bayesal.utils import RandomState, as_features, as_generator, as_targets, check_num_classes, infer_num_classes

from .evidence import cross_validate_prior, evidence_fixed_point, maximize_evidence
from .head import HeadConfig, train_head
from .linalg import feature_spectrum, spd_inverse
from .options import Curvature
from .spread import FALLBACK_SPREAD, MIN_ROWS_PER_CLASS_FOR_TEMPERATURE, TEMPERATURE_GRID, heldout_folds, select_spread
from .structures import CovarianceStructure
from .update import classes_seen

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["HeadFitting", "FALLBACK_PRIOR_PRECISION", "PRIOR_MEAN_BIAS_PRECISION"]
FALLBACK_PRIOR_PRECISION = 1.0  # a string prior with nothing to choose from (see fit)

#: The least prior precision of the bias when the weights' prior has a mean: a bias prior ``N(0, 1)``, one
#: logit unit. The default, nearly flat bias prior lets the first few labels push the bias of every class
#: they do not name down without bound, which overrides the prior mean's guess for those classes (BBC
#: News, 5 random labels, λ₀ = 1: accuracy 0.52 with the flat bias, 0.77 with this one; 0.79 with no label).
PRIOR_MEAN_BIAS_PRECISION = 1.0


class HeadFitting(CovarianceStructure):
    """The fitting part of :class:`~bayesal.laplace.posterior.LastLayerLaplace`: λ₀ (a number or chosen
    by cross-validation or the evidence), the exact MAP head, and the covariance at it. The covariance
    structure enters through the posterior's hooks (``_hessian_factor``, ``_num_params``, ...)."""

    prior_precision: float | str
    spread: float | str
    curvature: Curvature
    lambda_mf: float
    dtype: torch.dtype
    device: torch.device
    head_config: HeadConfig
    random_state: RandomState
    exact_until: int
    prior_mean: torch.Tensor | None

    def fit(
        self,
        features: Any,
        labels: Any,
        *,
        weight: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        num_classes: int | None = None,
    ) -> Self:
        """Set the MAP mean and build the covariance from labeled ``features (N, D)``, ``labels (N,)``.

        With ``weight (C, D)`` (and optionally ``bias (C,)``) the given head is the MAP estimate and is
        not refitted: ``prior_precision="evidence"`` then takes the evidence-optimal λ₀ for that head;
        ``"cv"``/``"cv-predictive"`` cannot validate a head they do not fit and use λ₀ = 1, as does any string prior
        without labeled data (pass a number to set λ₀). Otherwise λ₀ is chosen (if a string) and the
        head is fitted with ``head_config`` (seeded by ``random_state`` for the paper's SGD recipe).
        Without ``num_classes`` (or ``weight``) C is inferred from soft labels' width or as the largest
        class index + 1: pass it when the labeled set may lack the last classes. With a ``prior_mean``
        every head is fitted around it, and without labeled data (and ``weight``) the posterior is the
        prior: mean ``M₀``, bias zero, covariance ``λ₀⁻¹ I`` (λ₀ = 1 for a string prior, as above).
        """
        x = as_features(features, dtype=self.dtype, device=self.device)
        if weight is None and x.shape[0] == 0 and self.prior_mean is not None:
            weight = self.prior_mean  # no labels: the prior is the posterior
        if weight is not None:
            num_classes = int(weight.shape[0]) if num_classes is None else num_classes
        inferred = num_classes is None
        if num_classes is None:
            num_classes = infer_num_classes(labels)
        c = check_num_classes(num_classes)
        targets = as_targets(labels, c, n=x.shape[0], dtype=self.dtype, device=self.device)
        if inferred and x.shape[0] and classes_seen(targets) < 2:
            raise InvalidInputError(
                f"the labels hold a single class, so the number of classes cannot be inferred (it would be {c}); "
                "pass num_classes=C"
            )
        d = x.shape[1]
        if self.prior_mean is not None and self.prior_mean.shape != (c, d):
            raise InvalidInputError(f"prior_mean has shape {tuple(self.prior_mean.shape)}, expected (C, D) = ({c}, {d})")
        self._check_capacity(c, d)  # before the head fit and any (P, P) allocation
        lam, folds = None, None
        if weight is None:
            if x.shape[0] == 0:
                raise InvalidInputError("cannot train a head without labeled data; pass weight= instead")
            weight, bias, lam, folds = self._fit_head(x, targets, c)
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
        self.spread_, self.temperature_ = self._choose_spread(x, targets, folds, given_head=lam is None)
        self.covariance_ = spd_inverse(self._prior_plus_ggn(x))
        self.n_updates_ = 0
        self._scale_tril = None
        # the early phase (see update): few labeled rows are kept, so that updates refit on them exactly
        self._retained = (x, targets) if x.shape[0] <= self.exact_until else None
        return self

    def _fit_head(self, x: torch.Tensor, targets: torch.Tensor, c: int) -> tuple[torch.Tensor, torch.Tensor, float, Any]:
        """Choose λ₀ (if a string) and fit the head; returns ``(W, b, λ₀, folds)`` (the cross-validation
        folds at λ₀ when it chose λ₀ and the spread is chosen from folds too, else None)."""
        cfg = self._head_config()
        x64, t64 = x.to(torch.float64), targets.to(torch.float64)
        m0 = None if self.prior_mean is None else self.prior_mean.to(torch.float64)
        if self.prior_precision in ("cv", "cv-predictive"):
            # folds from random_state when given, else a fixed seed: the same data give the same λ₀;
            # "cv-predictive" scores with this posterior's own predictive
            gen = None if self.random_state is None else as_generator(self.random_state)
            sel = cross_validate_prior(x64, t64, head=cfg, generator=gen, predictive=self.prior_precision != "cv",
                                       curvature=self._cv_curvature(), lambda_mf=self.lambda_mf,
                                       keep_folds=self.spread == "cv", prior_mean=m0)
            lam, head, folds = sel.prior_precision, (sel.weight, sel.bias), sel.folds
        elif self.prior_precision == "evidence":
            ev = maximize_evidence(x64, t64, self._ggn_spectrum(x64), self._evidence_multiplicity(c), head=cfg,
                                   prior_mean=m0)
            lam, head, folds = ev.prior_precision, (ev.weight, ev.bias), None
        else:
            lam, head, folds = float(self.prior_precision), None, None
        if head is None or cfg.solver != "exact":
            head = train_head(x, targets, c, config=cfg, prior_precision=lam, generator=as_generator(self.random_state),
                              prior_mean=self.prior_mean)
        return head[0].to(self.dtype), head[1].to(self.dtype), lam, folds

    def _choose_spread(
        self, x: torch.Tensor, targets: torch.Tensor, folds: Any, given_head: bool
    ) -> tuple[float, float]:
        """The spread ``τ`` and likelihood temperature ``T`` of the predictive: the spread given (with
        ``T = 1``), or (``"cv"``) chosen by the predictive's held-out log-likelihood on the folds at λ₀
        (those that chose λ₀, else fresh ones): ``τ`` by the one-standard-error rule, then ``T`` at that
        ``τ`` once there are :data:`~bayesal.laplace.spread.MIN_ROWS_PER_CLASS_FOR_TEMPERATURE` rows per
        class (see :func:`~bayesal.laplace.spread.select_spread`). A head passed to :meth:`fit` is not
        refitted on folds: it keeps the plain Laplace predictive."""
        if not isinstance(self.spread, str):
            return float(self.spread), 1.0
        if given_head:
            return FALLBACK_SPREAD, 1.0
        x64, t64 = x.to(torch.float64), targets.to(torch.float64)
        if folds is None:
            gen = None if self.random_state is None else as_generator(self.random_state)
            folds = heldout_folds(x64, t64, self.prior_precision_, head=self._head_config(), generator=gen,
                                  curvature=self._cv_curvature(),
                                  prior_mean=None if self.prior_mean is None else self.prior_mean.to(torch.float64))
        enough = x.shape[0] >= MIN_ROWS_PER_CLASS_FOR_TEMPERATURE * targets.shape[1]
        fit = select_spread(x64, t64, folds, self.prior_precision_, lambda_mf=self.lambda_mf,
                            temperatures=TEMPERATURE_GRID if enough else (1.0,))
        return fit.spread, fit.temperature

    def _head_config(self) -> HeadConfig:
        """How heads are fitted: :attr:`head_config`, with the bias prior at least
        :data:`PRIOR_MEAN_BIAS_PRECISION` when the weights' prior has a mean."""
        cfg = self.head_config
        if self.prior_mean is None or cfg.bias_precision >= PRIOR_MEAN_BIAS_PRECISION:
            return cfg
        return replace(cfg, bias_precision=PRIOR_MEAN_BIAS_PRECISION)

    def _cv_curvature(self) -> Curvature:
        """Curvature of the predictive that ``"cv-predictive"`` scores."""
        return self.curvature

    def _ggn_spectrum(self, x: torch.Tensor) -> Any:
        """Eigenvalues of the data GGN at a head, for the evidence, with the categorical curvature (the
        'gaussian' m = 1 overstates the curvature of a softmax, and its evidence prefers the prior alone)."""

        def spectrum(weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
            probs = torch.softmax(x @ weight.T + bias, dim=-1)
            return feature_spectrum(self._hessian_factor(x, probs, Curvature.CATEGORICAL))[0]

        return spectrum

    def _given_head_precision(self, x: torch.Tensor) -> float:
        """λ₀ for a head passed to :meth:`fit`: the number given, or the evidence-optimal λ₀ for it."""
        if not isinstance(self.prior_precision, str):
            return float(self.prior_precision)
        if self.prior_precision != "evidence" or x.shape[0] == 0:
            return FALLBACK_PRIOR_PRECISION
        x64 = x.to(torch.float64)
        eig = self._ggn_spectrum(x64)(self.mean_.to(torch.float64), self.bias_.to(torch.float64))
        shift = self.mean_ if self.prior_mean is None else self.mean_ - self.prior_mean
        return evidence_fixed_point(float(shift.square().sum()), eig, self._evidence_multiplicity(self.num_classes_))

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, features: Any, labels: Any, **kwargs: Any) -> Self:
        """Laplace posterior around a trained ``torch.nn.Linear`` head (its weights are the MAP)."""
        bias = linear.bias if linear.bias is not None else None
        return cls(**kwargs).fit(features, labels, weight=linear.weight, bias=bias)

    def _prior_plus_ggn(self, x: torch.Tensor) -> torch.Tensor:
        """``λ₀ I + Σ_i H_i`` accumulated over chunks of ``x``."""
        p = self._num_params()
        prec = self.prior_precision_ * torch.eye(p, dtype=self.dtype, device=self.device)
        # a chunk's factor U has P / D rows of P columns per point (1 row shared, C rows full GGN)
        for chunk in self._chunks(x, per_row=p * (p // self.num_features_)):
            u = self._hessian_factor(chunk, self._point_probs(chunk), self.curvature)
            prec.addmm_(u.T, u)
        return prec

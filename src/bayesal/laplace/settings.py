"""The settings of a posterior as one frozen value, shared by every entry point.

The experiment runner (:class:`~bayesal.experiments.runner.ALConfig`), labeling sessions, the Label
Studio backend and the command line all describe the posterior they build with one
:class:`PosteriorOptions`: λ₀ (a number or how to choose it), the curvature and structure of the
covariance, the update's step size and Newton steps, the mean-field scale and how the head is fitted.
:meth:`PosteriorOptions.posterior` builds the (unfitted) :class:`LastLayerLaplace`;
:meth:`~PosteriorOptions.to_dict` / :meth:`~PosteriorOptions.from_dict` give the plain, JSON-ready form
that saved sessions keep.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from bayesal.exceptions import InvalidInputError
from bayesal.utils import RandomState, check_scalar

from .head import HeadConfig
from .options import Curvature, Hessian, PriorSelection, SpreadSelection, check_prior_precision
from .posterior import LastLayerLaplace
from .predictive import DEFAULT_LAMBDA_MF
from .structures import structure_class
from .update import DEFAULT_CURVATURE, DEFAULT_GAMMA, DEFAULT_STEPS, PAPER_OPTIONS, check_gamma, check_steps
from .updating import DEFAULT_EXACT_UNTIL

__all__ = ["PosteriorOptions", "PAPER_PRIOR_PRECISION"]

#: The paper's fixed prior precision λ₀.
PAPER_PRIOR_PRECISION = 1.0


@dataclass(frozen=True)
class PosteriorOptions:
    """How a :class:`LastLayerLaplace` is set up: everything but where its tensors live.

    The defaults are the library's (:data:`~bayesal.laplace.update.FIDELITY_OPTIONS`: categorical
    curvature, ``γ = 1``, 5 damped Newton steps; λ₀ chosen by cross-validation at each fit; the exact
    MAP head); :meth:`paper` gives the paper's. Values are validated and normalised on construction
    (strings become the option enums, numbers floats), so two equal settings compare equal.

    Parameters
    ----------
    prior_precision : float or str, default "cv"
        λ₀ > 0, or a :class:`~bayesal.laplace.options.PriorSelection` (``"cv"``, ``"cv-predictive"``,
        ``"evidence"``) to choose it from the labels at every fit.
    curvature : str, default "categorical"
        Per-point curvature of the shared covariance (:class:`~bayesal.laplace.options.Curvature`).
    hessian : str, default "shared"
        Structure of the covariance (:class:`~bayesal.laplace.options.Hessian`).
    gamma : float, default 1
        Step size ``γ >= 0`` of the mean in every update (and every update a strategy simulates).
    steps : int, default 5
        Newton steps of an update.
    lambda_mf : float, default π/8
        Scale of the mean-field predictive ``softmax(z / sqrt(1 + λ σ²))``.
    exact_until : int, default 64
        Labeled points up to which an update refits the head exactly (the early phase; 0 = never).
    spread : float or str, default "cv"
        The predictive's temperature ``τ >= 0`` on the covariance (logit variances ``τ σ²``), or a
        :class:`~bayesal.laplace.options.SpreadSelection` (``"cv"``) to choose it at every fit;
        ``1`` is the plain Laplace predictive (:mod:`bayesal.laplace.spread`).
    head : HeadConfig, default HeadConfig()
        How the head is fitted (the exact MAP by default; ``HeadConfig.paper()`` the paper's recipe).

    Raises
    ------
    InvalidInputError
        A value out of range or of the wrong type (the message names it).
    """

    prior_precision: float | PriorSelection = PriorSelection.CV
    curvature: Curvature = DEFAULT_CURVATURE
    hessian: Hessian = Hessian.SHARED
    gamma: float = DEFAULT_GAMMA
    steps: int = DEFAULT_STEPS
    lambda_mf: float = DEFAULT_LAMBDA_MF
    head: HeadConfig = field(default_factory=HeadConfig)
    spread: float | SpreadSelection = SpreadSelection.CV
    exact_until: int = DEFAULT_EXACT_UNTIL

    def __post_init__(self) -> None:
        put = object.__setattr__  # frozen: normalise once, here
        put(self, "prior_precision", check_prior_precision(self.prior_precision))
        put(self, "curvature", Curvature.parse(self.curvature))
        put(self, "hessian", Hessian.parse(self.hessian))
        put(self, "gamma", check_gamma(self.gamma))
        put(self, "steps", check_steps(self.steps))
        put(self, "lambda_mf", float(check_scalar(self.lambda_mf, "lambda_mf", low=0)))
        put(self, "exact_until", int(check_scalar(self.exact_until, "exact_until", integer=True, low=0)))
        if isinstance(self.spread, str):
            put(self, "spread", SpreadSelection.parse(self.spread, "spread"))
        else:
            put(self, "spread", float(check_scalar(self.spread, "spread", low=0)))
        if not isinstance(self.head, HeadConfig):
            raise InvalidInputError(f"head must be a HeadConfig, got {type(self.head).__name__}")

    @classmethod
    def paper(cls, **overrides: Any) -> PosteriorOptions:
        """The paper's setup: :data:`~bayesal.laplace.update.PAPER_OPTIONS` (gaussian curvature,
        ``γ = 10``, one step, no exact early phase), ``HeadConfig.paper()`` (200 epochs RAdam), λ₀ = 1 and
        the plain Laplace predictive (spread 1); ``overrides`` replace any of these fields."""
        paper = {"prior_precision": PAPER_PRIOR_PRECISION, "head": HeadConfig.paper(), "spread": 1.0, **PAPER_OPTIONS}
        return cls(**{**paper, **overrides})

    def replace(self, **changes: Any) -> PosteriorOptions:
        """A copy with the given fields changed (validated like the constructor)."""
        return dataclasses.replace(self, **changes)

    @property
    def chooses_prior(self) -> bool:
        """Whether λ₀ is chosen from the labels at each fit (rather than a fixed number)."""
        return isinstance(self.prior_precision, PriorSelection)

    def posterior_kwargs(self) -> dict[str, Any]:
        """These options as keyword arguments of :class:`LastLayerLaplace` (plain values)."""
        return {
            "prior_precision": self._plain_prior(),
            "curvature": self.curvature.value,
            "hessian": self.hessian.value,
            "gamma": self.gamma,
            "steps": self.steps,
            "lambda_mf": self.lambda_mf,
            "head_config": self.head,
            "spread": self.spread.value if isinstance(self.spread, SpreadSelection) else self.spread,
            "exact_until": self.exact_until,
        }

    def posterior(
        self,
        *,
        random_state: RandomState = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float64,
        chunk_size: int | None = None,
    ) -> LastLayerLaplace:
        """A new, unfitted :class:`LastLayerLaplace` with these options.

        Parameters
        ----------
        random_state : int or torch.Generator, optional
            Seeds the cross-validation folds and the paper's SGD head.
        device : torch.device or str, optional
            Where the posterior's tensors live (default CPU).
        dtype : torch.dtype, default torch.float64
            Dtype of the covariance.
        chunk_size : int, optional
            Rows per block of the pool computations (default: sized from ``BLOCK_ELEMENTS``).

        Returns
        -------
        LastLayerLaplace
            Call :meth:`LastLayerLaplace.fit` on it.
        """
        # the factory's subclass for the structure (what LastLayerLaplace(hessian=...) builds)
        return structure_class(self.hessian)(**self.posterior_kwargs(), random_state=random_state, device=device,
                                             dtype=dtype, chunk_size=chunk_size)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values: ``prior_precision`` (number or string), ``curvature``, ``hessian``,
        ``gamma``, ``steps``, ``lambda_mf``, ``spread`` and ``head`` (the fields of the :class:`HeadConfig`)."""
        out = self.posterior_kwargs()
        del out["head_config"]
        out["head"] = asdict(self.head)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PosteriorOptions:
        """Options from :meth:`to_dict`'s form; absent keys take the defaults, ``head`` may be a mapping
        of :class:`HeadConfig` fields or a ``HeadConfig``.

        Raises
        ------
        InvalidInputError
            An unknown key or a bad value.
        """
        if not isinstance(data, Mapping):
            raise InvalidInputError(f"posterior options must be a mapping, got {type(data).__name__}")
        fields = tuple(f.name for f in dataclasses.fields(cls))
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise InvalidInputError(f"unknown posterior option(s) {unknown}; allowed: {fields}")
        kwargs = dict(data)
        head = kwargs.get("head")
        if isinstance(head, Mapping):
            names = tuple(f.name for f in dataclasses.fields(HeadConfig))
            bad = sorted(set(head) - set(names))
            if bad:
                raise InvalidInputError(f"unknown head option(s) {bad}; allowed: {names}")
            kwargs["head"] = HeadConfig(**head)
        return cls(**kwargs)

    def _plain_prior(self) -> float | str:
        p = self.prior_precision
        return p.value if isinstance(p, PriorSelection) else p

    def __repr__(self) -> str:
        values = self.to_dict()
        values["head"] = self.head
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in values.items())})"

"""The registry of covariance structures: ``hessian="shared"`` names a posterior subclass.

A structure is one subclass of :class:`~bayesal.laplace.posterior.LastLayerLaplace` in a module of its
own, registered under its name with :func:`register_structure`; ``LastLayerLaplace(hessian=name)`` and
:meth:`~bayesal.laplace.posterior.LastLayerLaplace.from_state_dict` build it by that name.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch

from bayesal.exceptions import InvalidInputError

from .options import Curvature, UpdateMethod
from .pending import PendingMean
from .update import LogitStep, SpanCurvature, SpanNewtonResult

if TYPE_CHECKING:
    from .posterior import LastLayerLaplace

__all__ = ["CovarianceStructure", "register_structure", "structure_class", "structure_names"]


class CovarianceStructure:
    """What a covariance structure implements: the hooks through which the structure-independent parts
    of :class:`~bayesal.laplace.posterior.LastLayerLaplace` (fitting, predictive, update, persistence)
    reach its covariance. Its fitted state: ``mean_ (C, D)``, ``bias_ (C,)``, ``covariance_ (P, P)``,
    ``num_classes_``, ``num_features_``."""

    #: The registered name of the structure (set by :func:`register_structure`).
    structure: ClassVar[str]

    # the fitted state every part reads (set by fit, update or from_state_dict)
    mean_: torch.Tensor
    bias_: torch.Tensor
    num_classes_: int
    num_features_: int
    prior_precision_: float
    spread_: float
    temperature_: float
    n_updates_: int
    _scale_tril: torch.Tensor | None
    _cov_state: tuple[torch.Tensor, torch.Tensor | None]
    _retained: tuple[torch.Tensor, torch.Tensor] | None  # the labeled rows of the early phase (see update)
    _mean_state: torch.Tensor | PendingMean  # μ, or μ with an update's correction pending (see mean_)
    covariance_: torch.Tensor  # Σ dense (a property of the base class, which forms a pending downdate)

    # helpers of the base class that the fitting and update parts use
    def _check_fitted(self) -> None:
        """Raise :class:`~bayesal.exceptions.NotFittedError` before :meth:`fit`."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _check_fitted")

    def _features(self, features: Any) -> torch.Tensor:
        """``features (N, D)`` checked and converted to the posterior's dtype and device."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _features")

    def _chunks(self, x: torch.Tensor, per_row: int | None = None, step: int | None = None) -> Iterator[torch.Tensor]:
        """Row blocks of ``x`` sized to keep temporaries small."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _chunks")

    def _new_point_logits(self, x: torch.Tensor) -> torch.Tensor:
        """MAP logits ``(M, C)`` of an update's new rows, leaving a pending mean correction pending."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _new_point_logits")

    def _point_probs(self, x: torch.Tensor) -> torch.Tensor:
        """MAP softmax ``(N, C)`` of checked rows."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _point_probs")

    # the structure's own algebra (checked by register_structure)
    def _check_capacity(self, num_classes: int, num_features: int) -> None:
        """Raise :class:`~bayesal.exceptions.InvalidInputError` before fitting ``C`` classes on ``D``
        features if the structure cannot hold them (default: any size; the full GGN has a limit)."""

    def _num_params(self) -> int:
        """Side ``P`` of the covariance: ``D`` (shared) or ``C·D`` (full)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _num_params")

    def _hessian_factor(self, x: torch.Tensor, probs: torch.Tensor, curvature: Curvature) -> torch.Tensor:
        """Factor ``U (K, P)`` of the data GGN ``UᵀU`` of rows ``x (n, D)`` at the softmax ``probs (n, C)``;
        ``curvature`` is the per-point curvature where the structure has one."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _hessian_factor")

    def _evidence_multiplicity(self, c: int) -> int:
        """How often the spectrum of :meth:`_hessian_factor` repeats in the evidence's log-determinant."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _evidence_multiplicity")

    def _logit_cov_chunk(self, x: torch.Tensor) -> torch.Tensor:
        """The logit (co)variance of one chunk of rows ``x (n, D)``: ``σ² (n,)`` or ``(n, C, C)``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _logit_cov_chunk")

    def _var_shape(self) -> tuple[int, ...]:
        """Shape of an empty :meth:`logit_variance`."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _var_shape")

    def _per_row_cost(self) -> int:
        """Elements per row of :meth:`_logit_cov_chunk`'s temporaries (sizes its chunks)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _per_row_cost")

    def _span_products(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(JΣ, JΣJᵀ)`` for new rows ``x (M, D)``: what an update's Newton iteration needs of ``Σ``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _span_products")

    def _span_curvature(self) -> SpanCurvature:
        """The linearisation of new points' likelihood in :func:`~bayesal.laplace.update.span_newton`."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _span_curvature")

    def _updated_state(
        self, x: torch.Tensor, res: SpanNewtonResult, left: torch.Tensor, method: UpdateMethod
    ) -> tuple[torch.Tensor | PendingMean, torch.Tensor, torch.Tensor | None]:
        """``(μ' or its pending form, Σ' or its base, pending factor or None)`` after :func:`span_newton`
        gave ``res``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _updated_state")

    def _weight_space_update(
        self, x: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, gamma: float, steps: int
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(μ', Σ')`` of an update with rows ``x (M, D)`` computed in the weight space, for batches
        larger than the span iteration handles well (``M > D``); ``None``: this structure has no such
        form and the span iteration is used whatever ``M``."""
        return None

    def _mean_step(self, phi: torch.Tensor, resid: torch.Tensor, gamma: float) -> torch.Tensor:
        """``μ + γ Σ ∇`` for the gradient ``Σ_j resid_j ⊗ φ_j`` of rows ``phi (M, D)``, ``resid (M, C)``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _mean_step")

    def sample_weights(self, n_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Weight samples ``(K, C, D)`` from ``N(μ, Σ)``."""
        raise NotImplementedError(f"{type(self).__name__} does not implement sample_weights")

    def weight_covariance(self) -> torch.Tensor:
        """The covariance of row-major ``vec W`` as a dense ``(C·D, C·D)`` (e.g. ``I_C ⊗ Σ``)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement weight_covariance")


    # The cached-logit fast paths of selection need logits that are independent across classes with one
    # variance per point; structures without that (the full GGN) refuse them with this message.
    def logit_moments(self, features: Any, *, compute_dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """MAP logits and one logit variance per row; only structures with a shared covariance offer it."""
        raise self._no_fast_path("logit_moments")

    def covariance_product(self, features: torch.Tensor) -> torch.Tensor:
        """``ΦΣ`` with the shared ``Σ``; only structures with a shared covariance offer it."""
        raise self._no_fast_path("covariance_product")

    def logit_step(
        self, phi: torch.Tensor, target: torch.Tensor, *, logits: torch.Tensor | None = None, gamma: float | None = None
    ) -> LogitStep:
        """A rank-1 update for cached logits; only structures with a shared covariance offer it."""
        raise self._no_fast_path("logit_step")

    def absorb(self, step: LogitStep) -> Any:
        """Absorb a :meth:`logit_step`; only structures with a shared covariance offer it."""
        raise self._no_fast_path("absorb")

    def _no_fast_path(self, what: str) -> InvalidInputError:
        return InvalidInputError(f"{what} needs a posterior with hessian='shared' (covariance I_C ⊗ Σ), "
                                 f"not {str(self.structure)!r}")


#: The hooks a registered structure must implement (the fitted-state helpers come from the base class).
STRUCTURE_HOOKS = ('_num_params', '_hessian_factor', '_evidence_multiplicity', '_logit_cov_chunk', '_var_shape', '_per_row_cost', '_span_products', '_span_curvature', '_updated_state', '_mean_step', 'sample_weights', 'weight_covariance')

_STRUCTURES: dict[str, type[LastLayerLaplace]] = {}

_P = TypeVar("_P", bound="type[LastLayerLaplace]")


def register_structure(name: str) -> Callable[[_P], _P]:
    """Class decorator: register a posterior subclass as the covariance structure ``name`` (a string, or
    a :class:`~bayesal.laplace.options.Hessian` member for the built-in ones); it becomes the class's
    ``structure`` and its instances' ``hessian``."""

    def decorate(cls: _P) -> _P:
        missing = [hook for hook in STRUCTURE_HOOKS if getattr(cls, hook) is getattr(CovarianceStructure, hook)]
        if missing:
            raise InvalidInputError(f"covariance structure {cls.__name__} does not implement {missing}")
        key = _key(name)
        if key in _STRUCTURES and _STRUCTURES[key] is not cls:
            raise InvalidInputError(f"covariance structure {key!r} is already registered by {_STRUCTURES[key]!r}")
        cls.structure = name
        _STRUCTURES[key] = cls
        return cls

    return decorate


def structure_names() -> tuple[str, ...]:
    """The registered structure names, in registration order."""
    return tuple(_STRUCTURES)


def structure_class(name: Any) -> type[LastLayerLaplace]:
    """The subclass registered as ``name`` (a string or a :class:`~bayesal.laplace.options.Hessian`)."""
    key = _key(name)
    try:
        return _STRUCTURES[key]
    except KeyError:
        raise InvalidInputError(f"unknown hessian {name!r}; choose one of {structure_names()}") from None


def _key(name: Any) -> str:
    return str(name.value if hasattr(name, "value") else name)

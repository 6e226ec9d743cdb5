"""The option sets of the posterior as ``str`` enums: a member compares equal to its plain string.

``Curvature.parse("categorical")`` (or a member) returns the member and turns a typo into an
:class:`~bayesal.exceptions.InvalidInputError` that lists the choices. Saved configurations keep the
plain string (``member.value``).
"""

from __future__ import annotations

from enum import Enum
from typing import Any, TypeVar

from bayesal.exceptions import InvalidInputError
from bayesal.utils import check_scalar

__all__ = [
    "Option", "Curvature", "Hessian", "UpdateMethod", "Predictive", "PriorSelection", "SpreadSelection", "HeadSolver",
    "check_prior_precision", "BLOCK_ELEMENTS", "MAX_DENSE_PARAMETERS",
]

#: Upper bound on the elements of one temporary block (32 MiB in float64): every row-chunked
#: computation in bayesal (pool scoring, Monte Carlo samples, BAIT, TypiClust, look-ahead) sizes its
#: blocks from it.
BLOCK_ELEMENTS = 1 << 22

#: Largest ``P = C·D`` for which a dense ``(P, P)`` weight covariance is formed (the full GGN's, or
#: :meth:`~bayesal.laplace.shared.SharedLaplace.weight_covariance`): 2 GiB in float64, and fitting the
#: full GGN holds about three such matrices. Above it they are refused before anything is allocated.
MAX_DENSE_PARAMETERS = 16384

_O = TypeVar("_O", bound="Option")


class Option(str, Enum):
    """Base of the option enums: ``str(member)`` and f-strings give the plain value."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)

    @classmethod
    def choices(cls) -> tuple[str, ...]:
        """The accepted values, in declaration order."""
        return tuple(m.value for m in cls)

    @classmethod
    def parse(cls: type[_O], value: Any, what: str | None = None) -> _O:
        """The member for ``value`` (a member or its string).

        Parameters
        ----------
        value : str or Option
            What the user passed.
        what : str, optional
            Name of the setting for the error message (default: the enum's name in lower case).

        Returns
        -------
        Option
            The member.

        Raises
        ------
        InvalidInputError
            If ``value`` is not one of :meth:`choices`.
        """
        try:
            return cls(value)
        except ValueError:
            name = what or cls.__name__.lower()
            raise InvalidInputError(f"unknown {name} {value!r}; choose one of {cls.choices()}") from None


class Curvature(Option):
    """Per-point curvature ``m_i`` of the shared-covariance precision."""

    GAUSSIAN = "gaussian"  #: ``m = 1`` (label-independent; the paper's)
    CATEGORICAL = "categorical"  #: ``m = p_max (1 − p_max)``


class Hessian(Option):
    """Structure of the weight covariance."""

    SHARED = "shared"  #: one ``Σ (D, D)`` shared by the classes (the paper's)
    FULL = "full"  #: the multi-class GGN, ``(C·D, C·D)``


class UpdateMethod(Option):
    """How :meth:`LastLayerLaplace.update` downdates the covariance (same result)."""

    WOODBURY = "woodbury"  #: one batched Woodbury block
    RANK1 = "rank1"  #: a chain of Sherman–Morrison steps


class Predictive(Option):
    """Approximation of the posterior predictive."""

    MEAN_FIELD = "mean_field"  #: ``softmax(z / sqrt(1 + λ σ²))``
    MC = "mc"  #: Monte Carlo over Laplace logit samples


class PriorSelection(Option):
    """How :meth:`LastLayerLaplace.fit` chooses the prior precision λ₀ from the labeled data."""

    CV = "cv"  #: 5-fold held-out log-likelihood of the exact MAP head over a grid
    CV_PREDICTIVE = "cv-predictive"  #: the same, scoring the mean-field Laplace predictive
    EVIDENCE = "evidence"  #: Laplace marginal likelihood (MacKay's fixed point)


class SpreadSelection(Option):
    """How :meth:`LastLayerLaplace.fit` chooses the spread ``τ`` of the predictive (a number sets it)."""

    CV = "cv"  #: the predictive's held-out log-likelihood on the folds that chose λ₀ (:mod:`bayesal.laplace.spread`)


class HeadSolver(Option):
    """How the linear head is fitted (:class:`~bayesal.laplace.head.HeadConfig`)."""

    EXACT = "exact"  #: L-BFGS to the exact MAP of the posterior's objective
    RADAM = "radam"  #: the paper's SGD recipe (RAdam, cosine schedule)


def check_prior_precision(value: Any) -> float | PriorSelection:
    """The prior precision λ₀: a number ``> 0`` (as a float) or a :class:`PriorSelection`.

    Parameters
    ----------
    value : float or str
        A positive number, or one of :meth:`PriorSelection.choices` to choose λ₀ from the labels.

    Returns
    -------
    float or PriorSelection
        The validated value.

    Raises
    ------
    InvalidInputError
        For a string that is not a selection, or a number that is not finite and positive.
    """
    if isinstance(value, str):
        try:
            return PriorSelection(value)
        except ValueError:
            raise InvalidInputError(
                f"prior_precision must be a number, got str {value!r} (or one of {PriorSelection.choices()} "
                "to choose it from the labels)"
            ) from None
    return float(check_scalar(value, "prior_precision", low=0, low_inclusive=False))

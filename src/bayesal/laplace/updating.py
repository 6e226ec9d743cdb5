"""Updating a last-layer posterior with new labels: the Newton iteration in the span of the new points
(docs/method.md §4), label corrections, and the update's options."""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Any

import torch

from bayesal.exceptions import InvalidInputError, NumericalError
from bayesal.utils import as_targets, check_scalar

from .head import HeadConfig, fit_map_head
from .options import UpdateMethod
from .pending import PendingMean, dense_mean
from .structures import CovarianceStructure
from .update import check_gamma, check_steps, classes_seen, span_newton

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["NewtonUpdating", "DEFAULT_EXACT_UNTIL"]

#: Labeled points up to which an update refits the head exactly (the early phase): with this few labels
#: the Gaussian the posterior keeps of the old data misses the exact retrain by points of accuracy
#: (benchmarks/calibration.py, 10 + 10 labels), and an exact refit of this many rows costs milliseconds.
DEFAULT_EXACT_UNTIL = 64


class NewtonUpdating(CovarianceStructure):
    """The update part of :class:`~bayesal.laplace.posterior.LastLayerLaplace`: :meth:`update`,
    :meth:`relabel` and :meth:`with_update_options`. The iteration is structure-independent; the covariance
    structure supplies its products with ``Σ``, its curvature model and its downdate through the
    posterior's hooks (``_span_products``, ``_span_curvature``, ``_updated_state``, ``_mean_step``)."""

    gamma: float
    steps: int
    exact_until: int
    prior_precision_: float
    prior_mean: torch.Tensor | None
    dtype: torch.dtype
    device: torch.device

    def update(
        self,
        features: Any,
        labels: Any,
        gamma: float | None = None,
        method: str | UpdateMethod = UpdateMethod.WOODBURY,
        inplace: bool = False,
        steps: int | None = None,
    ) -> Self:
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
            full GGN), not ``O(P²)``. A batch of more than ``D`` rows runs the same iterates in the weight
            space instead (:func:`~bayesal.laplace.update.weight_newton`, ``O(M·D² + D³)`` per step for the
            shared covariance): a large batch costs about what a retrain does. The covariance uses the
            curvature of the last linearisation.
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
        logits = self._new_point_logits(x)
        # a batch larger than the weight space: the same Newton iterates with D×D matrices (O(M·D² + D³)
        # per step) instead of the span's M×M ones (O(M³)), where the structure has that form
        dense = self._weight_space_update(x, logits, targets, gamma, steps) if x.shape[0] > self.num_features_ else None
        mean: torch.Tensor | PendingMean
        if dense is not None:
            (mean, cov), pending = dense, None
        else:
            # every Newton step lives in the span of the new points (see span_newton): one product with Σ
            # before the iteration and one downdate after it, whatever the number of steps
            left, kernel = self._span_products(x)
            res = span_newton(kernel, logits, targets, self._span_curvature(), gamma, steps)
            mean, cov, pending = self._updated_state(x, res, left, method)
        rows = self._early_rows(x, targets, gamma)
        bias = self.bias_
        if rows is not None and classes_seen(rows[1]) >= 2:
            # the early phase: the exact MAP of every label so far, from the Newton iterate (with one class
            # labeled the exact MAP is degenerate, its bias alone fits the labels: the update keeps b)
            mean, bias = self._exact_head(rows, dense_mean(mean), bias)
        target._set_updated(mean, cov, self.n_updates_ + x.shape[0], pending=pending)
        target.bias_, target._retained = bias, rows
        return target

    def _early_rows(self, x: torch.Tensor, targets: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor] | None:
        """All labeled rows after adding ``x``, while the posterior is in its early phase: it kept the rows
        it was fitted and updated with, they stay at most ``exact_until``, and the update is the Newton
        step of the head's own objective (γ = 1). Else None: the early phase is over. (It does not depend
        on how the head was first trained, which a saved posterior does not record.)"""
        if self._retained is None or gamma != 1.0:
            return None
        if self._retained[0].shape[0] + x.shape[0] > self.exact_until:
            return None
        return torch.cat([self._retained[0], x]), torch.cat([self._retained[1], targets])

    def _head_config(self) -> HeadConfig:
        """How heads are fitted (the fitting part's: ``head_config`` with the bias prior of a prior mean)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _head_config")

    def _exact_head(
        self, rows: tuple[torch.Tensor, torch.Tensor], mean: torch.Tensor, bias: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The exact MAP ``(W, b)`` of the head objective at λ₀ on ``rows``, warm-started at ``(mean, bias)``
        (L-BFGS to the default head tolerance, whatever solver trained the head first). The covariance stays
        the update's (its curvature at the Newton iterate)."""
        extra: dict[str, Any] = {}
        if self.prior_mean is not None:  # centred on the prior mean, with the bias prior of its fits
            extra = {"prior_mean": self.prior_mean.to(torch.float64),
                     "bias_precision": self._head_config().bias_precision}
        fit = fit_map_head(rows[0].to(torch.float64), rows[1].to(torch.float64), self.prior_precision_,
                           init=(mean.to(torch.float64), bias.to(torch.float64)), **extra)
        return fit.weight.to(self.dtype), fit.bias.to(self.dtype)

    def _set_updated(
        self, mean: torch.Tensor | PendingMean, cov: torch.Tensor, n_updates: int, pending: torch.Tensor | None = None
    ) -> None:
        """Replace (never mutate: copies share them) the mean and the covariance ``cov − pendingᵀ pending``
        after an update."""
        diag = cov.diagonal() if pending is None else cov.diagonal() - pending.square().sum(0)
        lo, hi = torch.aminmax(diag)  # NaN propagates into both
        if not (float(lo) > 0 and math.isfinite(float(hi))):
            raise NumericalError("the updated covariance lost positive definiteness; rescale the features "
                                 "(e.g. standardize them) or refit the posterior")
        self._mean_state = mean  # what mean_ forms on first read when a correction is pending
        self._cov_state = (cov, pending)
        self.n_updates_ = n_updates
        self._scale_tril = None

    def _step_size(self, gamma: float | None) -> float:
        """The one place an update's options are resolved: ``None`` means the posterior's own."""
        return self.gamma if gamma is None else check_gamma(gamma)

    def with_update_options(
        self, gamma: float | None = None, steps: int | None = None, exact_until: int | None = None
    ) -> Self:
        """A shallow copy whose updates use other options (``None`` keeps this posterior's).

        Parameters
        ----------
        gamma : float, optional
            Step size ``γ`` of the mean.
        steps : int, optional
            Newton steps of an update.
        exact_until : int, optional
            Labeled points up to which an update refits the head exactly (0: the Newton update from the
            start, as the cached logit steps of sequential selection simulate it).

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
        if exact_until is not None:
            out.exact_until = int(check_scalar(exact_until, "exact_until", integer=True, low=0))
            if out._retained is not None and out._retained[0].shape[0] > out.exact_until:
                out._retained = None
        return out

    def relabel(self, features: Any, old: int, new: int, gamma: float | None = None) -> Self:
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
        e = torch.zeros(1, c, dtype=self.dtype, device=self.device)
        e[0, int(new)] += 1.0
        e[0, int(old)] -= 1.0
        # the Newton mean step of the swapped likelihood terms: the residual y − p becomes e_new − e_old
        step = self._step_size(gamma)
        out.mean_ = self._mean_step(phi, e, step)
        out._retained = self._relabeled_rows(phi[0], int(old), int(new), step)
        if out._retained is not None and classes_seen(out._retained[1]) >= 2:  # early phase: the exact MAP
            out.mean_, out.bias_ = self._exact_head(out._retained, out.mean_, self.bias_)
        return out

    def _relabeled_rows(self, phi: torch.Tensor, old: int, new: int, gamma: float) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The early phase's rows with the label of ``phi (D,)`` changed from ``old`` to ``new`` (its first
        such row); None when not in the early phase or the row is not among them (the phase then ends)."""
        if self._retained is None or gamma != 1.0:
            return None
        xs, ts = self._retained
        hit = ((xs == phi).all(1) & (ts.argmax(1) == old)).nonzero().flatten()
        if hit.numel() == 0:
            return None
        ts = ts.clone()
        ts[int(hit[0])] = 0.0
        ts[int(hit[0]), new] = 1.0
        return xs, ts

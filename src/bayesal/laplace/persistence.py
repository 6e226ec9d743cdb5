"""Persistence and copies of a last-layer posterior: :meth:`state_dict`, :meth:`from_state_dict`, :meth:`copy`."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch

from bayesal.exceptions import CorruptStateError

from .options import Curvature
from .structures import CovarianceStructure

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Persistence"]


class Persistence(CovarianceStructure):
    """The persistence part of :class:`~bayesal.laplace.posterior.LastLayerLaplace`: a plain-dict state
    (``torch.save``-able, loadable with ``weights_only=True``) that rebuilds the same posterior — its
    structure (by ``hessian``), options, fitted tensors and the rows an early-phase update refits on."""

    prior_precision: float | str
    curvature: Curvature
    spread: float | str
    exact_until: int
    lambda_mf: float
    gamma: float
    steps: int
    dtype: torch.dtype
    device: torch.device
    chunk_size: int | None
    prior_mean: torch.Tensor | None

    def copy(self) -> Self:
        """Independent copy: tensors cloned, configuration shared (it is immutable)."""
        out = copy.copy(self)
        for name in ("mean_", "bias_", "covariance_", "_scale_tril", "prior_mean"):
            value = getattr(self, name, None)
            if isinstance(value, torch.Tensor):
                setattr(out, name, value.clone())
        return out

    def state_dict(self) -> dict[str, Any]:
        """Plain dict of config and tensors, loadable with :meth:`from_state_dict` (``torch.save``-able)."""
        self._check_fitted()
        return {
            "config": {
                "prior_precision": self.prior_precision,
                "curvature": self.curvature.value,
                "hessian": str(self.structure),
                "lambda_mf": self.lambda_mf,
                "gamma": self.gamma,
                "steps": self.steps,
                "dtype": str(self.dtype).replace("torch.", ""),
                "chunk_size": self.chunk_size,
                "spread": self.spread,
                "exact_until": self.exact_until,
            },
            "prior_precision": self.prior_precision_,
            "spread": self.spread_,
            "temperature": self.temperature_,
            "mean": self.mean_.cpu(),
            "bias": self.bias_.cpu(),
            "covariance": self.covariance_.cpu(),
            "n_updates": self.n_updates_,
            # the labeled rows an update refits on exactly (early phase; see NewtonUpdating.update)
            "retained": None if self._retained is None else [t.cpu() for t in self._retained],
            # the prior's mean M₀ (None: zero), which every later fit and exact refit is centred on
            "prior_mean": None if self.prior_mean is None else self.prior_mean.cpu(),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], device: torch.device | str | None = None) -> Self:
        """Rebuild a posterior saved with :meth:`state_dict`; raises ``ValueError`` on malformed state."""
        try:
            cfg = dict(state["config"])
            cfg["dtype"] = getattr(torch, cfg["dtype"])
            cfg.setdefault("steps", 1)  # states written before iterated updates made one step
            cfg.setdefault("spread", 1.0)  # ... and before the spread of the predictive was chosen
            cfg.setdefault("exact_until", 0)  # ... and before few-label updates were exact
            # states written before the prior could have a mean hold none: a zero-mean prior
            post = cls(device=device, prior_mean=state.get("prior_mean"), **cfg)  # type: ignore[call-arg]  # the factory
            post.mean_ = state["mean"].to(dtype=post.dtype, device=post.device)
            post.bias_ = state["bias"].to(dtype=post.dtype, device=post.device)
            post.covariance_ = state["covariance"].to(dtype=post.dtype, device=post.device)
            post.n_updates_ = int(state["n_updates"])
            # states written before λ₀ could be chosen hold only the configured number
            post.prior_precision_ = float(state.get("prior_precision", cfg["prior_precision"]))  # type: ignore[arg-type]
            # states written before the spread was chosen predict with the plain Laplace predictive
            post.spread_ = float(state.get("spread", 1.0))
            # ... and those before the likelihood's temperature was chosen with it, with none
            post.temperature_ = float(state.get("temperature", 1.0))
            kept = state.get("retained")
            post._retained = None if kept is None else tuple(t.to(dtype=post.dtype, device=post.device) for t in kept)
        except (KeyError, TypeError, AttributeError) as err:
            raise CorruptStateError(f"malformed posterior state: {err!r}") from err
        post.num_classes_, post.num_features_ = post.mean_.shape
        p = post._num_params()
        rows = post._retained
        if post.bias_.shape != (post.num_classes_,) or post.covariance_.shape != (p, p) or (
            post.prior_mean is not None and post.prior_mean.shape != post.mean_.shape) or (
            rows is not None and (len(rows) != 2 or rows[0].shape[1:] != (post.num_features_,)
                                  or rows[1].shape != (rows[0].shape[0], post.num_classes_))
        ):
            raise CorruptStateError("malformed posterior state: tensor shapes do not agree")
        return post

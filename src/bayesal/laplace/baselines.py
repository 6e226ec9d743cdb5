"""Baselines the Bayesian update is compared against (docs/method.md §4): first-order step, Monte Carlo
reweighting, retraining the head from scratch and fine-tuning it."""

from __future__ import annotations

from typing import Any

import torch

from bayesal.utils import as_targets

from .head import HeadConfig, train_head
from .posterior import LastLayerLaplace

__all__ = ["first_order_update", "MCReweighting", "retrain_head", "finetune_head"]


def first_order_update(posterior: LastLayerLaplace, features: Any, labels: Any, gamma: float = 1e-3) -> LastLayerLaplace:
    """Gradient step ``μ_c += γ Σ_j (y_jc − p_jc) φ_j``; the covariance is left as it is."""
    x = posterior._features(features)
    targets = as_targets(labels, posterior.num_classes_, n=x.shape[0], dtype=posterior.dtype, device=posterior.device)
    out = posterior.copy()
    out.mean_ = posterior.mean_ + gamma * (targets - posterior._point_probs(x)).T @ x
    out.n_updates_ += x.shape[0]
    return out


class MCReweighting:
    """Importance reweighting of ``K`` weight samples from the Laplace posterior.

    New labels multiply each sample's weight by ``exp(γ Σ_j log p(y_j | x_j, W_k))``; the predictive is
    the weighted mean softmax. The samples themselves never move, which is why this baseline collapses
    once the weights concentrate on few samples.
    """

    def __init__(self, posterior: LastLayerLaplace, n_samples: int = 1000, gamma: float = 1e-2,
                 generator: torch.Generator | None = None) -> None:
        self.posterior = posterior
        self.gamma = float(gamma)
        self.samples = posterior.sample_weights(n_samples, generator)  # (K, C, D)
        self.log_weights = torch.zeros(n_samples, dtype=posterior.dtype, device=posterior.device)

    def update(self, features: Any, labels: Any) -> MCReweighting:
        """Absorb new labeled points (in place); returns ``self``."""
        x = self.posterior._features(features)
        t = as_targets(labels, self.posterior.num_classes_, n=x.shape[0], dtype=self.posterior.dtype,
                       device=self.posterior.device)
        logp = torch.log_softmax(torch.einsum("nd,kcd->knc", x, self.samples) + self.posterior.bias_, dim=-1)
        self.log_weights = self.log_weights + self.gamma * (logp * t).sum((1, 2))
        return self

    @property
    def weights(self) -> torch.Tensor:
        """Normalized sample weights ``(K,)``."""
        return torch.softmax(self.log_weights, dim=0)

    def predict_proba(self, features: Any) -> torch.Tensor:
        x = self.posterior._features(features)
        w = self.weights
        out = []
        # the block temporaries are (K, n, C)
        for ch in self.posterior._chunks(x, per_row=self.samples.shape[0] * self.posterior.num_classes_):
            probs = torch.softmax(torch.einsum("nd,kcd->knc", ch, self.samples) + self.posterior.bias_, dim=-1)
            out.append(torch.einsum("k,knc->nc", w, probs))
        return torch.cat(out) if out else torch.zeros(0, self.posterior.num_classes_, dtype=self.posterior.dtype)


def retrain_head(features: Any, labels: Any, num_classes: int, config: HeadConfig = HeadConfig.paper(),
                 generator: torch.Generator | None = None, prior_precision: float = 1.0,
                 init: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Train ``(W, b)`` on all labels: by default the paper's recipe from scratch; with ``HeadConfig()``
    the exact MAP for ``prior_precision``, warm-started from ``init`` if given."""
    return train_head(features, labels, num_classes, config=config, generator=generator,
                      prior_precision=prior_precision, init=init)


def finetune_head(posterior: LastLayerLaplace, features: Any, labels: Any, epochs: int = 10,
                  generator: torch.Generator | None = None,
                  config: HeadConfig = HeadConfig()) -> tuple[torch.Tensor, torch.Tensor]:
    """Continue training from the posterior's mean for a few ``epochs`` on the given data
    (pass only the new points, or all labels, for the two fine-tuning baselines)."""
    cfg = HeadConfig.paper(epochs=epochs, lr=config.lr, weight_decay=config.weight_decay, batch_size=config.batch_size)
    return train_head(features, labels, posterior.num_classes_, config=cfg,
                      init=(posterior.mean_, posterior.bias_), generator=generator)

"""Training of the linear head ``z = W φ + b`` on frozen features (the 'retrain' baseline of the spec)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bayesal.utils.validation import as_features, as_targets, check_num_classes, check_scalar

__all__ = ["HeadConfig", "train_head"]


@dataclass(frozen=True)
class HeadConfig:
    """Optimiser settings; defaults are the paper's (200 epochs, RAdam, lr 1e-2, wd 1e-4, cosine, bs 64)."""

    epochs: int = 200
    lr: float = 1e-2
    weight_decay: float = 1e-4
    batch_size: int = 64

    def __post_init__(self) -> None:
        check_scalar(self.epochs, "epochs", integer=True, low=0)
        check_scalar(self.lr, "lr", low=0, low_inclusive=False)
        check_scalar(self.weight_decay, "weight_decay", low=0)
        check_scalar(self.batch_size, "batch_size", integer=True, low=1)


def train_head(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    *,
    config: HeadConfig = HeadConfig(),
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit ``W (C, D)`` and ``b (C,)`` by cross-entropy; return them detached, in the features' dtype.

    ``features (N, D)``, ``labels (N,)`` integer classes. ``init=(W, b)`` fine-tunes from those weights
    instead of starting from zeros. Mini-batches are drawn with ``generator`` so runs are reproducible.
    """
    num_classes = check_num_classes(num_classes)
    x = as_features(features)
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    y = as_targets(labels, num_classes, n=x.shape[0], dtype=x.dtype).argmax(1)
    n, d = x.shape
    if n == 0:
        raise ValueError("cannot train the head on an empty labeled set")
    if init is None:
        w0 = torch.zeros(num_classes, d, dtype=x.dtype, device=x.device)
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

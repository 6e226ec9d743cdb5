"""Evaluation metrics on predicted probabilities ``(N, C)`` and integer labels ``(N,)``."""

from __future__ import annotations

import numpy as np
import torch

from bayesal.exceptions import InvalidInputError

__all__ = ["accuracy", "nll", "brier", "ece", "evaluate", "aulc", "decision_flips"]


def _as(probs, labels) -> tuple[torch.Tensor, torch.Tensor]:
    p = torch.as_tensor(probs, dtype=torch.float64)
    y = torch.as_tensor(labels).long()
    if p.ndim != 2 or y.ndim != 1 or p.shape[0] != y.shape[0]:
        raise InvalidInputError(f"expected probs (N, C) and labels (N,), got {tuple(p.shape)} and {tuple(y.shape)}")
    return p, y


def accuracy(probs, labels) -> float:
    p, y = _as(probs, labels)
    return float((p.argmax(1) == y).double().mean())


def nll(probs, labels, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood of the true class."""
    p, y = _as(probs, labels)
    return float(-torch.log(p[torch.arange(len(y)), y].clamp_min(eps)).mean())


def brier(probs, labels) -> float:
    """Mean squared distance between the probability vector and the one-hot label (sum over classes)."""
    p, y = _as(probs, labels)
    onehot = torch.nn.functional.one_hot(y, p.shape[1]).double()
    return float(((p - onehot) ** 2).sum(1).mean())


def ece(probs, labels, n_bins: int = 15) -> float:
    """Expected calibration error of the top-class confidence, equal-width bins."""
    p, y = _as(probs, labels)
    conf, pred = p.max(1)
    correct = (pred == y).double()
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            total += float(mask.double().mean() * (conf[mask].mean() - correct[mask].mean()).abs())
    return total


def evaluate(probs, labels) -> dict[str, float]:
    """All four metrics in one dict."""
    return {"accuracy": accuracy(probs, labels), "nll": nll(probs, labels),
            "brier": brier(probs, labels), "ece": ece(probs, labels)}


def aulc(num_labels, values) -> float:
    """Area under the learning curve, normalised by the label range (trapezoid; equals the mean value
    for evenly spaced cycles)."""
    x = np.asarray(num_labels, dtype=float)
    v = np.asarray(values, dtype=float)
    if x.size < 2:
        return float(v.mean()) if v.size else float("nan")
    trapezoid = getattr(np, "trapezoid", None) or np.trapz  # type: ignore[attr-defined]  # numpy < 2 has only trapz
    return float(trapezoid(v, x) / (x[-1] - x[0]))


def decision_flips(before, after) -> float:
    """Fraction of instances whose predicted class changed between two ``(N, C)`` predictions."""
    a = torch.as_tensor(before).argmax(1)
    b = torch.as_tensor(after).argmax(1)
    return float((a != b).double().mean())

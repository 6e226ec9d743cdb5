"""Helpers shared by the update-fidelity benchmarks (``update_vs_retrain.py``, ``head_fit.py``)."""

from __future__ import annotations

import math

import torch

from bayesal.data import load_dataset

T_975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23,
         15: 2.13, 20: 2.09, 30: 2.04}


def t975(df: int) -> float:
    """Two-sided 95 % Student-t quantile for ``df`` degrees of freedom (conservative between table rows)."""
    return T_975.get(df) or T_975[max(k for k in T_975 if k <= df)] if df >= 1 else math.nan


def accuracy(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    """Test accuracy of the linear head ``(W, b)`` on ``x (N, D)``, ``y (N,)``."""
    return float(((x @ w.T + b).argmax(1) == y).double().mean())


def load_split(name: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """``(x_train, y_train, x_test, y_test, C)`` of a built-in data set, features in float64."""
    ds = load_dataset(name)
    return (torch.as_tensor(ds.train_features, dtype=torch.float64), torch.as_tensor(ds.train_labels).long(),
            torch.as_tensor(ds.test_features, dtype=torch.float64), torch.as_tensor(ds.test_labels).long(),
            ds.num_classes)

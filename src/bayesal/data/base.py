"""The dataset container shared by the runner, the labeling session and the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

__all__ = ["Dataset"]


@dataclass
class Dataset:
    """Features of a train (pool) and test split with integer labels and class names.

    ``train_features (N, D)`` / ``test_features (M, D)`` float32 arrays; ``train_labels (N,)`` /
    ``test_labels (M,)`` int64 in ``[0, C)``; ``class_names`` of length ``C``. ``train_items`` /
    ``test_items`` optionally hold what a person labels (texts, image arrays, file names), aligned
    with the rows. ``meta`` records source, backbone and cache key.
    """

    name: str
    train_features: np.ndarray
    train_labels: np.ndarray
    test_features: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    train_items: Sequence[Any] | None = None
    test_items: Sequence[Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_features(self) -> int:
        return int(self.train_features.shape[1])

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={self.train_features.shape}, test={self.test_features.shape}, "
            f"classes={self.num_classes})"
        )

"""Doubted labels in Label Studio: the score of an annotated task's prediction is its label doubt.

For a task with a live annotation, the backend's prediction score is its label doubt ``a / (a + g)``
under the posterior *without* that annotation (the leave-one-out predictive,
:func:`bayesal.laplace.leave_one_out`: a downdate of the current posterior, never a refit; ``g`` the
probability of the annotated class, ``a`` that of the likeliest class not annotated), so sorting
the Data Manager by prediction score puts the likeliest label errors first. An annotation choosing
several classes counts as the soft label that splits its mass over them, as the update absorbed it; a
task annotated more than once is scored against its latest annotation, with one label removed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from bayesal.laplace import LastLayerLaplace, leave_one_out

from .config import ChoicesConfig

__all__ = ["label_doubt_scores"]


def label_doubt_scores(posterior: LastLayerLaplace, features: np.ndarray, labels: Sequence[Sequence[str]],
                       config: ChoicesConfig) -> np.ndarray:
    """Label doubt ``(n,)`` of annotated tasks ``features (n, D)`` with the class names ``labels`` each
    annotation chose; NaN for a task none of whose classes is in ``config`` any more."""
    out = np.full(len(labels), np.nan)
    targets = torch.zeros(len(labels), len(config.classes), dtype=torch.float64)
    for k, names in enumerate(labels):
        idx = [i for i in (config.class_index(n) for n in names) if i is not None]
        if idx:
            targets[k, idx] = 1.0 / len(idx)
    known = (targets.sum(1) > 0).numpy()
    if known.any():
        x = torch.as_tensor(np.asarray(features, dtype=np.float64)[known])
        out[known] = leave_one_out(posterior, x, targets[torch.from_numpy(known)]).doubt.numpy()
    return out

"""Input checks shared by the public API: every error names the problem and the offending argument."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["as_features", "as_targets", "check_num_classes", "infer_num_classes"]


def as_features(
    x: Any,
    *,
    name: str = "features",
    dim: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    check_finite: bool = True,
    row_offset: int = 0,
) -> torch.Tensor:
    """Convert ``x`` to a finite 2-D tensor ``(N, D)``; raise ``ValueError`` naming ``name`` otherwise.

    ``check_finite=False`` skips the NaN/inf scan (for a large pool checked chunk by chunk, with
    ``row_offset`` giving the chunk's first row for the error message). An empty 1-D input is read as
    ``(0, dim)``."""
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.number):
            raise ValueError(f"{name} must be numeric, got dtype {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(np.asarray(x, dtype=np.float64))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name} could not be converted to a numeric array: {err}") from err
    if x.ndim == 1 and dim is not None and x.shape[0] == dim:
        x = x.unsqueeze(0)
    elif x.ndim == 1 and dim is not None and x.shape[0] == 0:
        x = x.reshape(0, dim)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(x.shape)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"{name} have {x.shape[1]} columns but the model expects D={dim}")
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    if dtype is not None or device is not None:
        x = x.to(dtype=dtype or x.dtype, device=device)
    if check_finite and x.numel() and not bool(torch.isfinite(x).all()):
        bad = (~torch.isfinite(x)).any(dim=1).nonzero().flatten()
        raise ValueError(
            f"{name} contain NaN or inf in {bad.numel()} row(s), first at row {int(bad[0]) + row_offset}"
        )
    return x


def as_targets(
    y: Any,
    num_classes: int,
    *,
    n: int | None = None,
    name: str = "labels",
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Labels as a target matrix ``(M, C)``.

    Accepts integer class indices ``(M,)`` (turned into one-hot) or soft labels ``(M, C)`` whose rows
    are probability vectors (used for fantasized 'expected' updates).
    """
    if not isinstance(y, torch.Tensor):
        arr = np.asarray(y)
        if arr.dtype.kind == "u":  # torch supports few unsigned dtypes; class indices fit in int64
            arr = arr.astype(np.int64)
        elif arr.dtype.kind not in "iubf":
            raise ValueError(f"{name} must be integer class indices or (M, C) soft labels, got dtype {arr.dtype}"
                             " (map class names to indices first, e.g. with bayesal.data.LabelEncoder)")
        y = torch.as_tensor(arr)
    if y.dtype == torch.bool:
        y = y.long()
    if y.ndim == 0:
        y = y.reshape(1)
    if y.ndim == 1:
        if y.is_floating_point():
            if not bool(torch.isfinite(y).all()) or not bool((y == y.round()).all()):
                raise ValueError(f"{name} must be integer class indices, got non-integer values")
            y = y.long()
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(
                f"{name} contain class index {int(y.max()) if int(y.max()) >= num_classes else int(y.min())}"
                f" outside [0, {num_classes - 1}]"
            )
        out = torch.nn.functional.one_hot(y.long(), num_classes).to(dtype=dtype, device=device)
    elif y.ndim == 2:
        if y.shape[1] != num_classes:
            raise ValueError(f"soft {name} have {y.shape[1]} columns, expected C={num_classes}")
        out = y.to(dtype=dtype, device=device)
        if not bool(torch.isfinite(out).all()) or bool((out < 0).any()):
            raise ValueError(f"soft {name} must be finite and non-negative")
        if not torch.allclose(out.sum(1), torch.ones_like(out[:, 0]), atol=1e-6):
            raise ValueError(f"soft {name} rows must sum to 1")
    else:
        raise ValueError(f"{name} must be (M,) class indices or (M, C) soft labels, got {tuple(y.shape)}")
    if n is not None and out.shape[0] != n:
        raise ValueError(f"{name} has {out.shape[0]} entries but features have {n} rows")
    return out


def check_num_classes(num_classes: int) -> int:
    if int(num_classes) < 2:
        raise ValueError(f"need at least 2 classes, got {num_classes}")
    return int(num_classes)


def infer_num_classes(y: Any, *, name: str = "labels") -> int:
    """``C`` of soft labels ``(M, C)``, or ``max + 1`` of class indices ``(M,)`` — which misses classes
    above the largest label present, so callers that know ``C`` should pass it."""
    arr = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if arr.ndim == 2:
        return int(arr.shape[1])
    if arr.size == 0:
        raise ValueError(f"{name} are empty; pass num_classes or at least one labeled point")
    if arr.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be integer class indices or (M, C) soft labels, got dtype {arr.dtype}")
    return int(arr.max()) + 1

"""Input checks shared by the public API: every error names the problem and the offending argument.

Errors are :class:`~bayesal.exceptions.InvalidInputError` (a ``ValueError``) for a wrong type, shape
or range, and :class:`~bayesal.exceptions.NumericalError` for features whose scale would overflow the
covariance or the predictive in the working dtype.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch

from bayesal.exceptions import InvalidInputError, NumericalError

__all__ = [
    "as_features", "as_targets", "check_num_classes", "infer_num_classes", "check_scalar", "check_dtype",
    "max_feature_scale", "summarize_validation_errors",
]

FLOAT_DTYPES = (torch.float32, torch.float64)


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"


def check_scalar(
    value: Any,
    name: str,
    *,
    integer: bool = False,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    allow_none: bool = False,
) -> Any:
    """``value`` as a Python ``float`` (or ``int`` with ``integer=True``) after checking type and range.

    Accepts Python and NumPy numbers and 0-d tensors; refuses strings, booleans, NaN and infinities
    (a string ``'1'`` would otherwise fail later in a comparison with a ``TypeError``). Bounds are
    inclusive unless ``low_inclusive=False``. ``None`` passes through with ``allow_none=True``.
    """
    if value is None and allow_none:
        return None
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.ndim == 0:
        value = value.item()
    elif isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        kind = "a whole number" if integer else "a number"
        raise InvalidInputError(f"{name} must be {kind}, got {_describe(value)}")
    if integer:
        if not isinstance(value, numbers.Integral):
            raise InvalidInputError(f"{name} must be a whole number, got {_describe(value)}")
        out: Any = int(value)
    else:
        out = float(value)
        if not math.isfinite(out):
            raise InvalidInputError(f"{name} must be a finite number, got {value}")
    if low is not None and (out < low or (out == low and not low_inclusive)):
        raise InvalidInputError(f"{name} must be {'>=' if low_inclusive else '>'} {low:g}, got {value}")
    if high is not None and out > high:
        raise InvalidInputError(f"{name} must be <= {high:g}, got {value}")
    return out


def check_dtype(dtype: Any, name: str = "dtype") -> torch.dtype:
    """``torch.float32`` or ``torch.float64`` (also given as ``"float32"``/``"float64"`` or a NumPy
    float dtype); other types are refused: half precision cannot hold a covariance, integers none."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.replace("torch.", ""), dtype)
    elif not isinstance(dtype, torch.dtype):
        try:
            dtype = {np.dtype("float32"): torch.float32, np.dtype("float64"): torch.float64}.get(np.dtype(dtype), dtype)
        except TypeError:
            pass
    if dtype not in FLOAT_DTYPES:
        raise InvalidInputError(f"{name} must be torch.float32 or torch.float64, got {dtype!r}")
    return dtype


def max_feature_scale(dtype: torch.dtype) -> float:
    """Largest ``|x|`` accepted in features of ``dtype``: sums of ``x²`` over up to 10⁸ rows (the
    precision matrix) stay finite, about 1.3e150 in float64 and 1.8e15 in float32."""
    return math.sqrt(torch.finfo(dtype).max) * 1e-4


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
            raise InvalidInputError(f"{name} must be numeric, got dtype {x.dtype}")
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(np.asarray(x, dtype=np.float64))
        except (TypeError, ValueError) as err:
            raise InvalidInputError(f"{name} could not be converted to a numeric array: {err}") from err
    if x.ndim == 1 and dim is not None and x.shape[0] == dim:
        x = x.unsqueeze(0)
    elif x.ndim == 1 and dim is not None and x.shape[0] == 0:
        x = x.reshape(0, dim)
    if x.ndim != 2:
        raise InvalidInputError(f"{name} must be 2-D (N, D), got shape {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise InvalidInputError(f"{name} have no columns (shape {tuple(x.shape)}); a model needs at least one feature")
    if x.is_complex():
        raise InvalidInputError(f"{name} are complex ({str(x.dtype).replace('torch.', '')}); pass real features")
    if dim is not None and x.shape[1] != dim:
        raise InvalidInputError(f"{name} have {x.shape[1]} columns but the model expects D={dim}")
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    if dtype is not None or device is not None:
        x = x.to(dtype=dtype or x.dtype, device=device)
    if check_finite and x.numel():
        # the common case in one reduction (NaN fails the comparison); the rows only when it fails: a
        # row's max |x| is NaN/inf exactly when the row holds NaN/inf
        limit = max_feature_scale(x.dtype)
        if float(x.abs().max()) <= limit:
            return x
        row_max = x.abs().amax(dim=1)
        if not bool(torch.isfinite(row_max).all()):
            bad = (~torch.isfinite(row_max)).nonzero().flatten()
            raise InvalidInputError(
                f"{name} contain NaN or inf in {bad.numel()} row(s), first at row {int(bad[0]) + row_offset}"
            )
        big = row_max > limit
        if bool(big.any()):
            row = int(big.nonzero()[0])
            raise NumericalError(
                f"{name} reach |x| = {float(x[row].abs().max()):.3g} in row {row + row_offset}, beyond the "
                f"{limit:.3g} that {str(x.dtype).replace('torch.', '')} can square and sum without overflow; "
                "rescale the features (e.g. standardize them)"
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
            raise InvalidInputError(f"{name} must be integer class indices or (M, C) soft labels, got dtype {arr.dtype}"
                             " (map class names to indices first, e.g. with bayesal.data.LabelEncoder)")
        y = torch.as_tensor(arr)
    if y.dtype == torch.bool:
        y = y.long()
    if y.ndim == 0:
        y = y.reshape(1)
    if y.ndim == 1:
        if y.is_floating_point():
            if not bool(torch.isfinite(y).all()) or not bool((y == y.round()).all()):
                raise InvalidInputError(f"{name} must be integer class indices, got non-integer values")
            y = y.long()
        if y.numel():
            lo, hi = (int(v) for v in torch.aminmax(y))
            if lo < 0 or hi >= num_classes:
                raise InvalidInputError(
                    f"{name} contain class index {hi if hi >= num_classes else lo} outside [0, {num_classes - 1}]"
                )
        out = torch.nn.functional.one_hot(y.long(), num_classes).to(dtype=dtype, device=device)
    elif y.ndim == 2:
        if y.shape[1] != num_classes:
            raise InvalidInputError(f"soft {name} have {y.shape[1]} columns, expected C={num_classes}")
        out = y.to(dtype=dtype, device=device)
        if not bool(torch.isfinite(out).all()) or bool((out < 0).any()):
            raise InvalidInputError(f"soft {name} must be finite and non-negative")
        if not torch.allclose(out.sum(1), torch.ones_like(out[:, 0]), atol=1e-6):
            raise InvalidInputError(f"soft {name} rows must sum to 1")
    else:
        raise InvalidInputError(f"{name} must be (M,) class indices or (M, C) soft labels, got {tuple(y.shape)}")
    if n is not None and out.shape[0] != n:
        raise InvalidInputError(f"{name} has {out.shape[0]} entries but features have {n} rows")
    return out


def check_num_classes(num_classes: int) -> int:
    c = check_scalar(num_classes, "num_classes", integer=True)
    if c < 2:
        raise InvalidInputError(f"need at least 2 classes, got num_classes={num_classes}")
    return c


def infer_num_classes(y: Any, *, name: str = "labels") -> int:
    """``C`` of soft labels ``(M, C)``, or ``max + 1`` of class indices ``(M,)`` — which misses classes
    above the largest label present, so callers that know ``C`` should pass it."""
    arr = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
    if arr.ndim == 2:
        return int(arr.shape[1])
    if arr.size == 0:
        raise InvalidInputError(f"{name} are empty; pass num_classes or at least one labeled point")
    if arr.dtype.kind not in "iuf":
        raise InvalidInputError(f"{name} must be integer class indices or (M, C) soft labels, got dtype {arr.dtype}")
    return int(arr.max()) + 1


def summarize_validation_errors(errors: Any) -> str:
    """``"index: Input should be a valid integer; …"`` from pydantic's error list (at most five, never the
    input values, which may be huge or not printable), for a web API's 422 message."""
    parts = []
    for e in list(errors)[:5]:
        where = ".".join(str(k) for k in e.get("loc", ())[1:]) or "body"
        parts.append(f"{where}: {e.get('msg', 'invalid value')}")
    return "; ".join(parts) or "not a JSON object of the expected fields"

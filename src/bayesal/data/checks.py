"""Input checks for user data. Every error is a ``ValueError`` that says what is wrong and where."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bayesal.exceptions import InvalidInputError

__all__ = ["check_features", "encode_labels", "check_lengths", "normalize_labels"]


def check_features(x: Any, *, name: str = "features", dim: int | None = None) -> np.ndarray:
    """Return ``x`` as a finite float32 array ``(N, D)``; raise ``ValueError`` otherwise.

    Empty data, non-numeric values, a wrong number of dimensions, a column count other than ``dim``
    and NaN/inf values (the first offending row is named) are rejected.
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch tensor, without importing torch
        x = x.detach().cpu().numpy()
    try:
        arr = np.asarray(x)
    except (TypeError, ValueError) as err:
        raise InvalidInputError(f"{name} could not be converted to an array: {err}") from err
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as err:
            raise InvalidInputError(f"{name} must be numeric, got dtype {arr.dtype}: {err}") from err
    if arr.ndim != 2:
        raise InvalidInputError(f"{name} must be 2-D (N, D), got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise InvalidInputError(f"{name} are empty (0 rows); at least one instance per class is needed")
    if arr.shape[1] == 0:
        raise InvalidInputError(f"{name} have 0 columns; at least one feature is needed")
    if dim is not None and arr.shape[1] != dim:
        raise InvalidInputError(f"{name} have {arr.shape[1]} columns, expected D={dim}")
    finite = np.isfinite(arr)
    if finite.all() and arr.dtype != np.float32 and arr.size:
        big = np.abs(arr) > np.finfo(np.float32).max  # would become inf in float32
        if big.any():
            r, c = (int(v[0]) for v in np.nonzero(big))
            raise InvalidInputError(f"{name} hold {arr[r, c]:.3g} at row {r}, column {c}, beyond the float32 range "
                                    "(3.4e38) the features are stored in; rescale the features")
    if not finite.all():
        bad_rows = np.flatnonzero(~finite.all(axis=1))
        r = int(bad_rows[0])
        c = int(np.flatnonzero(~finite[r])[0])
        raise InvalidInputError(
            f"{name} contain NaN or inf in {bad_rows.size} row(s); first at row {r}, column {c} "
            f"(value {arr[r, c]})"
        )
    return np.ascontiguousarray(arr, dtype=np.float32)


def check_lengths(n_features: int, n_labels: int, *, what: str = "") -> None:
    """Raise ``ValueError`` if features and labels have different lengths."""
    if n_features != n_labels:
        where = f" ({what})" if what else ""
        raise InvalidInputError(
            f"features and labels have different lengths{where}: {n_features} rows of features but "
            f"{n_labels} labels"
        )


def _names_of(values: np.ndarray) -> list[str]:
    return [str(v) for v in values]


def normalize_labels(labels: Any) -> np.ndarray:
    """Return ``labels`` as a 1-D array ``(N,)`` of integers, booleans or strings.

    Missing values (``None``, NaN — e.g. an empty CSV cell) and inf are rejected with their row;
    whole-number floats (how pandas reads an integer column with gaps) become int64 so that ``1.0``
    stays class ``1`` and does not become the name ``"1.0"``; fractional floats are rejected.
    """
    if hasattr(labels, "detach") and hasattr(labels, "cpu"):
        labels = labels.detach().cpu().numpy()
    y = np.asarray(labels)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise InvalidInputError(f"labels must be 1-D (N,), got shape {y.shape}")
    if y.size == 0:
        raise InvalidInputError("labels are empty (0 rows)")
    if y.dtype == object:
        missing = [i for i, v in enumerate(y) if v is None or (isinstance(v, float) and np.isnan(v))]
        if missing:
            raise InvalidInputError(f"labels contain {len(missing)} missing value(s); first at row {missing[0]} "
                                   "(to label unlabeled rows, use --items with --label-column)")
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in y):
            return y.astype(np.int64)
        return y.astype(str)
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all():
            bad = np.flatnonzero(~np.isfinite(y))
            raise InvalidInputError(f"labels contain {bad.size} missing/NaN/inf value(s); first at row {int(bad[0])}")
        if not np.all(y == np.round(y)):
            raise InvalidInputError("labels are floats with fractional parts; class labels must be integers or strings")
        return y.astype(np.int64)
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == bool or y.dtype.kind in "US"):
        raise InvalidInputError(f"labels must be integers or strings, got dtype {y.dtype}")
    return y


def encode_labels(
    labels: Any, class_names: Sequence[str] | None = None, *, min_classes: int = 2
) -> tuple[np.ndarray, list[str]]:
    """Map labels to int64 codes ``(N,)`` and return ``(codes, class_names)``.

    Without ``class_names`` the classes are the sorted unique label values (like scikit-learn's
    ``LabelEncoder``); integer labels ``0..C-1`` therefore keep their values. With ``class_names`` the
    code of a label is its position in that list; string labels must be names from the list and
    integer labels must lie in ``[0, len(class_names))``. Fewer than ``min_classes`` classes present
    is an error.
    """
    y = normalize_labels(labels)
    numeric = np.issubdtype(y.dtype, np.number) or y.dtype == bool
    if class_names is None:
        uniq, codes = np.unique(y, return_inverse=True)
        names = _names_of(uniq)
    else:
        names = [str(c) for c in class_names]
        if len(set(names)) != len(names):
            raise InvalidInputError(f"class_names contain duplicates: {names}")
        if numeric:
            codes = y.astype(np.int64)
            bad = (codes < 0) | (codes >= len(names))
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                raise InvalidInputError(
                    f"label {int(codes[i])} at row {i} is outside [0, {len(names)}) for the "
                    f"{len(names)} given class names"
                )
        else:
            index = {n: i for i, n in enumerate(names)}
            ys = y.astype(str)
            unknown = sorted(set(np.unique(ys)) - set(index))
            if unknown:
                shown = ", ".join(repr(u) for u in unknown[:5]) + (" …" if len(unknown) > 5 else "")
                raise InvalidInputError(f"unknown label name(s) not in class_names {names}: {shown}")
            codes = np.fromiter((index[v] for v in ys), dtype=np.int64, count=ys.size)
    codes = np.asarray(codes, dtype=np.int64).reshape(-1)
    present = np.unique(codes).size
    if present < min_classes:
        raise InvalidInputError(
            f"labels contain only {present} class(es) ({names[int(codes[0])]!r}); at least "
            f"{min_classes} classes are needed for classification"
        )
    return codes, names

"""The dataset container shared by the runner, the labeling session and the CLI."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bayesal.exceptions import DataFileError, InvalidInputError

from .arrayfiles import load_npz

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
    train_items: Sequence[Any] | np.ndarray | None = None
    test_items: Sequence[Any] | np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_features(self) -> int:
        return int(self.train_features.shape[1])

    @property
    def num_train(self) -> int:
        return int(self.train_features.shape[0])

    @property
    def num_test(self) -> int:
        return int(self.test_features.shape[0])

    def validate(self) -> Dataset:
        """Check shapes, dtypes, finiteness and label ranges; raise ``ValueError`` naming the problem."""
        from .checks import check_features, check_lengths

        c = self.num_classes
        if c < 2:
            raise InvalidInputError(f"dataset {self.name!r} has {c} class(es); at least 2 are needed")
        self.train_features = check_features(self.train_features, name="train_features")
        d = self.train_features.shape[1]
        if np.asarray(self.test_features).size == 0:
            self.test_features = np.zeros((0, d), dtype=np.float32)
        else:
            self.test_features = check_features(self.test_features, name="test_features", dim=d)
        for split, feats in (("train", self.train_features), ("test", self.test_features)):
            labels = np.asarray(getattr(self, f"{split}_labels")).reshape(-1)
            check_lengths(len(feats), len(labels), what=split)
            if labels.size and not np.issubdtype(labels.dtype, np.integer):
                raise InvalidInputError(f"{split}_labels must be integers, got dtype {labels.dtype}")
            labels = labels.astype(np.int64)
            if labels.size and (labels.min() < 0 or labels.max() >= c):
                raise InvalidInputError(f"{split}_labels must lie in [0, {c}), got range [{labels.min()}, {labels.max()}]")
            setattr(self, f"{split}_labels", labels)
            items = getattr(self, f"{split}_items")
            if items is not None and len(items) != len(feats):
                raise InvalidInputError(f"{split}_items has {len(items)} entries but there are {len(feats)} {split} rows")
        return self

    def save(self, path: str | os.PathLike) -> Path:
        """Write the dataset to one ``.npz`` file (arrays + a JSON header with names and meta).

        Items are kept when they are strings or a numeric array; other item types are dropped (noted in
        the header). Written atomically. Returns the path.
        """
        from .cache import _atomic_write

        path = Path(path)
        if path.suffix != ".npz":
            path = path.with_suffix(path.suffix + ".npz") if path.suffix else path.with_suffix(".npz")
        arrays: dict[str, Any] = {  # Any: savez_compressed types its **kwds loosely
            "train_features": np.asarray(self.train_features, dtype=np.float32),
            "train_labels": np.asarray(self.train_labels, dtype=np.int64),
            "test_features": np.asarray(self.test_features, dtype=np.float32),
            "test_labels": np.asarray(self.test_labels, dtype=np.int64),
        }
        dropped = []
        for split in ("train", "test"):
            items = getattr(self, f"{split}_items")
            if items is None:
                continue
            arr = _items_array(items)
            if arr is None:
                dropped.append(split)
            else:
                arrays[f"{split}_items"] = arr
        header = {
            "format": "bayesal-dataset",
            "version": 1,
            "name": self.name,
            "class_names": [str(c) for c in self.class_names],
            "meta": self.meta,
            "dropped_items": dropped,
        }
        arrays["header_json"] = np.array(json.dumps(header, default=str))
        _atomic_write(path, lambda f: np.savez_compressed(f, **arrays))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Dataset:
        """Read a dataset written by :meth:`save`; a damaged file or header raises :class:`DataFileError`."""
        arrays = load_npz(Path(path))
        header = _check_header(arrays.pop("header_json", None), path)
        missing = [k for k in ("train_features", "train_labels", "test_features", "test_labels") if k not in arrays]
        if missing:
            raise DataFileError(f"dataset file {path} lacks the array(s) {missing}; it is damaged: save it again")

        def items(split: str) -> Any:
            a = arrays.get(f"{split}_items")
            if a is None:
                return None
            return [str(v) for v in a] if a.dtype.kind == "U" else a

        ds = cls(
            name=header["name"],
            train_features=arrays["train_features"],
            train_labels=arrays["train_labels"],
            test_features=arrays["test_features"],
            test_labels=arrays["test_labels"],
            class_names=list(header["class_names"]),
            train_items=items("train"),
            test_items=items("test"),
            meta={**header["meta"], "loaded_from": str(path)},
        )
        return ds.validate()

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={self.train_features.shape}, test={self.test_features.shape}, "
            f"classes={self.num_classes})"
        )


def _items_array(items: Sequence[Any]) -> np.ndarray | None:
    """Items as a pickle-free array (strings or numbers), or ``None`` if they are neither."""
    if isinstance(items, np.ndarray) and items.dtype.kind in "biuf":
        return items
    seq = list(items)
    if all(isinstance(v, str) for v in seq):
        return np.array(seq, dtype=str)
    try:
        arr = np.asarray(seq)
    except (TypeError, ValueError):
        return None
    return arr if arr.dtype.kind in "biuf" else None


_HEADER_KEYS = {"format": str, "version": int, "name": str, "class_names": list, "meta": dict, "dropped_items": list}
MAX_HEADER_BYTES = 1 << 20


def _check_header(raw: Any, path: str | os.PathLike) -> dict[str, Any]:
    """The JSON header of a dataset file, checked against its schema (known keys with their types, a
    supported version, bounded size and nesting): a file never steers the loader with unexpected keys."""
    if raw is None:
        raise DataFileError(f"{path} is not a bayesal dataset file (no header_json entry)")
    text = str(raw)
    if len(text) > MAX_HEADER_BYTES:
        raise DataFileError(f"dataset file {path} has a header of {len(text)} bytes (at most {MAX_HEADER_BYTES}); "
                            "it is not a bayesal dataset file")
    try:
        header = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise DataFileError(f"dataset file {path} has an unreadable header ({type(err).__name__}); save it again") from err
    if not isinstance(header, dict) or header.get("format") != "bayesal-dataset":
        raise DataFileError(f"{path} is not a bayesal dataset file (its header has no format 'bayesal-dataset')")
    unknown = sorted(set(header) - set(_HEADER_KEYS))
    if unknown:
        raise DataFileError(f"dataset file {path} has unknown header key(s) {unknown[:5]}; it was not written by "
                            "this version of bayesal")
    for key, typ in _HEADER_KEYS.items():
        if key in header and (not isinstance(header[key], typ) or isinstance(header[key], bool)):
            raise DataFileError(f"dataset file {path}: header field {key!r} must be a {typ.__name__}, "
                                f"got {type(header[key]).__name__}")
    if header.get("version") != 1:
        raise DataFileError(f"dataset file {path} has version {header.get('version')!r}; this bayesal reads version 1")
    for key in ("name", "class_names"):
        if key not in header:
            raise DataFileError(f"dataset file {path}: header lacks {key!r}")
    if not all(isinstance(c, str) for c in header["class_names"]):
        raise DataFileError(f"dataset file {path}: class_names must be strings")
    header.setdefault("meta", {})
    return header

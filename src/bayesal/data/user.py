"""Bring your own data: feature files, arrays, or raw data embedded with your own torch module."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .base import Dataset
from .checks import check_features, check_lengths, encode_labels, normalize_labels

__all__ = ["LabelEncoder", "split_indices", "from_arrays", "load_features", "from_module"]

_LABEL_KEYS = ("labels", "y", "label", "targets", "target")
_FEATURE_KEYS = ("features", "X", "x", "embeddings")


class LabelEncoder:
    """Map class names to ``0..C-1`` (sorted unique names unless ``class_names`` fixes the order)."""

    def __init__(self, class_names: Sequence[str] | None = None) -> None:
        self.class_names: list[str] | None = list(map(str, class_names)) if class_names is not None else None

    def fit(self, labels: Any) -> LabelEncoder:
        if self.class_names is None:
            _, self.class_names = encode_labels(labels, None, min_classes=1)
        return self

    def transform(self, labels: Any) -> np.ndarray:
        """Codes ``(N,)`` int64; unknown names raise ``ValueError``."""
        if self.class_names is None:
            raise ValueError("LabelEncoder is not fitted")
        return encode_labels(labels, self.class_names, min_classes=1)[0]

    def fit_transform(self, labels: Any) -> np.ndarray:
        return self.fit(labels).transform(labels)

    def inverse_transform(self, codes: Any) -> list[str]:
        if self.class_names is None:
            raise ValueError("LabelEncoder is not fitted")
        return [self.class_names[int(c)] for c in np.asarray(codes).reshape(-1)]


def split_indices(
    labels: np.ndarray, test_size: float | int, random_state: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/test indices, stratified by label when every class has >= 2 instances."""
    n = len(labels)
    idx = np.arange(n)
    if test_size == 0:
        return idx, idx[:0]
    if isinstance(test_size, float) and not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size must be in (0, 1) or an integer count, got {test_size}")
    if isinstance(test_size, (int, np.integer)) and not 0 < test_size < n:
        raise ValueError(f"test_size={test_size} must be between 1 and {n - 1} for {n} rows")
    from sklearn.model_selection import train_test_split

    counts = np.bincount(labels)
    n_test = int(np.ceil(test_size * n)) if isinstance(test_size, float) else int(test_size)
    stratify = labels if (counts[counts > 0].min() >= 2 and n_test >= np.count_nonzero(counts)
                          and n - n_test >= np.count_nonzero(counts)) else None
    if stratify is None:
        warnings.warn("some class is too small for a stratified split; using a random split", stacklevel=3)
    tr, te = train_test_split(idx, test_size=test_size, random_state=random_state, stratify=stratify)
    return np.sort(tr), np.sort(te)


def _take(items: Any, idx: np.ndarray) -> Any:
    if items is None:
        return None
    if isinstance(items, np.ndarray):
        return items[idx]
    return [items[int(i)] for i in idx]


def from_arrays(
    features: Any,
    labels: Any,
    class_names: Sequence[str] | None = None,
    *,
    test_size: float | int = 0.2,
    random_state: int = 0,
    name: str = "user",
    items: Sequence[Any] | None = None,
    test_features: Any | None = None,
    test_labels: Any | None = None,
    test_items: Sequence[Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> Dataset:
    """Build a :class:`Dataset` from ``features (N, D)`` and ``labels (N,)`` (ints or strings).

    String labels are encoded as sorted unique names -> ``0..C-1`` unless ``class_names`` gives the
    order (then every label must be one of them). Without ``test_features`` the rows are split
    deterministically (stratified, ``test_size`` fraction or count, ``random_state``); ``test_size=0``
    gives an empty test set. ``items`` (e.g. texts) are split along with the rows.
    """
    x = check_features(features, name="features")
    if hasattr(labels, "__len__"):
        check_lengths(len(x), len(labels))
    info = {"source": "user arrays", "backbone": "user features", **(meta or {})}
    if test_features is not None or test_labels is not None:
        if test_features is None or test_labels is None:
            raise ValueError("give both test_features and test_labels, or neither")
        xt = check_features(test_features, name="test_features", dim=x.shape[1])
        a, b = normalize_labels(labels), normalize_labels(test_labels)
        check_lengths(len(x), len(a), what="train")
        check_lengths(len(xt), len(b), what="test")
        if a.dtype.kind in "iub" and b.dtype.kind in "iub":
            both = np.concatenate([a, b])
        else:
            both = np.concatenate([a.astype(str), b.astype(str)])
        codes, names = encode_labels(both, class_names)
        if np.unique(codes[: len(a)]).size < 2:
            raise ValueError("train labels contain fewer than 2 classes; at least 2 are needed")
        ds = Dataset(name, x, codes[: len(a)], xt, codes[len(a):], names, items, test_items, info)
        return ds.validate()
    y, names = encode_labels(labels, class_names)
    check_lengths(len(x), len(y))
    if items is not None:
        if len(items) != len(x):
            raise ValueError(f"items has {len(items)} entries but features have {len(x)} rows")
    tr, te = split_indices(y, test_size, random_state)
    info.update(test_size=test_size, random_state=random_state)
    ds = Dataset(
        name=name,
        train_features=x[tr],
        train_labels=y[tr],
        test_features=x[te],
        test_labels=y[te],
        class_names=names,
        train_items=_take(items, tr),
        test_items=_take(items, te),
        meta=info,
    )
    return ds.validate()


def _read_labels_file(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    lines = [ln for ln in lines if ln]
    try:
        return np.array([int(v) for v in lines], dtype=np.int64)
    except ValueError:
        return np.array(lines, dtype=str)


def load_features(
    path: str | os.PathLike,
    label_column: str = "label",
    feature_columns: Sequence[str] | None = None,
    *,
    labels: Any | None = None,
    labels_path: str | os.PathLike | None = None,
    class_names: Sequence[str] | None = None,
    item_column: str | None = None,
    split_column: str | None = "split",
    test_size: float | int = 0.2,
    random_state: int = 0,
    name: str | None = None,
) -> Dataset:
    """Load user features from ``.npy``, ``.npz``, ``.parquet`` or ``.csv`` into a :class:`Dataset`.

    - ``.npy``: the features ``(N, D)`` only; labels come from ``labels`` / ``labels_path`` (.npy or a
      text file with one label per line) or a sibling ``<stem>_labels.npy`` / ``<stem>.labels.npy``.
    - ``.npz``: keys ``features`` (or ``X``) and ``labels`` (or ``y``), optionally ``class_names``.
      A file written by :meth:`Dataset.save` is loaded as it is.
    - ``.parquet`` / ``.csv``: ``label_column`` plus ``feature_columns`` (default: every other numeric
      column). An optional ``item_column`` (e.g. the text) becomes the items; a ``split_column`` with
      values ``train``/``test`` fixes the split, otherwise it is made with ``test_size``.

    Labels may be strings; see :func:`from_arrays` for the encoding.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no such file: {p}")
    suffix = p.suffix.lower()
    name = name or p.stem
    common = dict(test_size=test_size, random_state=random_state, name=name)
    meta = {"source": str(p), "backbone": "user features"}
    if suffix == ".npy":
        x = np.load(p, allow_pickle=False)
        if labels is None:
            if labels_path is None:
                for cand in (p.with_name(p.stem + "_labels.npy"), p.with_name(p.stem + ".labels.npy")):
                    if cand.exists():
                        labels_path = cand
                        break
            if labels_path is None:
                raise ValueError(
                    f"{p} holds features only; pass labels=... or labels_path=... (or put the labels in "
                    f"{p.stem}_labels.npy next to it)"
                )
            labels = _read_labels_file(Path(labels_path))
        return from_arrays(x, labels, class_names, meta=meta, **common)
    if suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            keys = set(z.files)
            if "header_json" in keys:
                pass
            else:
                fk = next((k for k in _FEATURE_KEYS if k in keys), None)
                lk = next((k for k in _LABEL_KEYS if k in keys), None)
                if fk is None:
                    raise ValueError(f"{p} has no 'features' or 'X' array (keys: {sorted(keys)})")
                x = z[fk]
                if labels is None:
                    if lk is None:
                        raise ValueError(f"{p} has no 'labels' or 'y' array (keys: {sorted(keys)}); pass labels=...")
                    labels = z[lk]
                if class_names is None and "class_names" in keys:
                    class_names = [str(c) for c in z["class_names"]]
                items = z["items"] if "items" in keys else None
        if "header_json" in keys:
            return Dataset.load(p)
        return from_arrays(x, labels, class_names, items=items, meta=meta, **common)
    if suffix in (".parquet", ".pq", ".csv", ".tsv", ".txt"):
        import pandas as pd

        if suffix in (".parquet", ".pq"):
            df = pd.read_parquet(p)
        else:
            df = pd.read_csv(p, sep="\t" if suffix == ".tsv" else _sniff_separator(p))
        if len(df) == 0:
            raise ValueError(f"{p} has no rows")
        if labels is None:
            label_column = _find_label_column(df.columns, label_column, p)
        skip = {label_column, item_column, split_column}
        if feature_columns is None:
            index_like = [c for c in df.columns if str(c).startswith("Unnamed: ") or str(c) == "index"]
            if index_like:
                # what DataFrame.to_csv writes for the index: a row number, not a feature
                warnings.warn(f"{p}: ignoring index column(s) {index_like} (pass feature_columns= to keep them)",
                              stacklevel=2)
            skip.update(index_like)
            feature_columns = [c for c in df.columns if c not in skip and pd.api.types.is_numeric_dtype(df[c])]
            if not feature_columns:
                raise ValueError(f"{p} has no numeric feature columns besides {label_column!r}")
        else:
            missing = [c for c in feature_columns if c not in df.columns]
            if missing:
                raise ValueError(f"feature column(s) {missing} not in {p}; columns: {list(df.columns)[:20]}")
        x = df[list(feature_columns)].to_numpy()
        y = normalize_labels(labels if labels is not None else df[label_column].to_numpy())
        items = df[item_column].tolist() if item_column else None
        meta["feature_columns"] = [str(c) for c in feature_columns][:50]
        if split_column and split_column in df.columns:
            split = df[split_column].astype(str).str.lower().to_numpy()
            bad = sorted(set(split) - {"train", "test"})
            if bad:
                raise ValueError(f"column {split_column!r} must hold 'train' or 'test', found {bad[:5]}")
            tr, te = split == "train", split == "test"
            return from_arrays(
                x[tr], y[tr], class_names, name=name, items=_take(items, np.flatnonzero(tr)),
                test_features=x[te], test_labels=y[te], test_items=_take(items, np.flatnonzero(te)),
                meta={**meta, "split_column": split_column},
            )
        return from_arrays(x, y, class_names, items=items, meta=meta, **common)
    raise ValueError(f"unsupported file type {suffix!r} for {p}; use .npy, .npz, .parquet or .csv")


def _sniff_separator(path: Path) -> str:
    """The delimiter of a CSV file (``,``, ``;``, tab or ``|``), read from its first line."""
    import csv

    with open(path, newline="", errors="replace") as f:
        head = f.readline()
    try:
        return csv.Sniffer().sniff(head, delimiters=",;\t|").delimiter
    except csv.Error:
        return ","


def _find_label_column(columns: Any, wanted: str, path: Path) -> str:
    """``wanted`` if present; for the default name also the usual alternatives (``y``, ``target``, …),
    ignoring case."""
    cols = [str(c) for c in columns]
    if wanted in cols:
        return wanted
    candidates = (wanted,) + (_LABEL_KEYS if wanted == "label" else ())
    lower = {c.lower(): c for c in cols}
    for cand in candidates:
        if cand.lower() in lower:
            return lower[cand.lower()]
    raise ValueError(
        f"{path} has no label column {wanted!r}; columns: {cols[:20]} (pass label_column=..., or "
        "--label-column on the command line)"
    )


def from_module(
    module: Any,
    data: Any,
    labels: Any,
    class_names: Sequence[str] | None = None,
    *,
    batch_size: int = 64,
    progress: bool = True,
    pool: str | None = None,
    device: str | None = None,
    transform: Any | None = None,
    items: Sequence[Any] | None = None,
    name: str = "custom",
    test_size: float | int = 0.2,
    random_state: int = 0,
) -> Dataset:
    """Embed ``data`` with a user ``torch.nn.Module`` and build a :class:`Dataset`.

    ``data``: a tensor/array ``(N, ...)``, a ``DataLoader`` (not shuffled) or a sized iterable of items
    (see :class:`bayesal.data.backbones.TorchModuleBackbone`); ``labels (N,)`` in the same order.
    ``transform`` maps each item to a tensor (for iterables of items); ``pool="avg"`` averages 4-D
    outputs over space. Features are not cached (the module's weights are not hashed).
    """
    from .backbones import TorchModuleBackbone

    bb = TorchModuleBackbone(module, name=name, pool=pool, device=device, transform=transform)
    feats = bb.encode(data, batch_size=batch_size, progress=progress)
    check_lengths(len(feats), len(labels))
    return from_arrays(
        feats, labels, class_names, test_size=test_size, random_state=random_state, name=name, items=items,
        meta={"source": "user module", "backbone": f"{type(module).__name__} ({bb.dim}-d)"},
    )

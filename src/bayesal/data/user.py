"""Bring your own data: feature files, arrays, or raw data embedded with your own torch module."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bayesal.exceptions import DataFileError, InvalidInputError, MissingFileError
from bayesal.utils import require_regular_file

from .arrayfiles import first_line, load_npy, load_npz
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
            raise InvalidInputError("LabelEncoder is not fitted")
        return encode_labels(labels, self.class_names, min_classes=1)[0]

    def fit_transform(self, labels: Any) -> np.ndarray:
        return self.fit(labels).transform(labels)

    def inverse_transform(self, codes: Any) -> list[str]:
        if self.class_names is None:
            raise InvalidInputError("LabelEncoder is not fitted")
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
        raise InvalidInputError(f"test_size must be in (0, 1) or an integer count, got {test_size}")
    if isinstance(test_size, (int, np.integer)) and not 0 < test_size < n:
        raise InvalidInputError(f"test_size={test_size} must be between 1 and {n - 1} for {n} rows")
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
    items: Sequence[Any] | np.ndarray | None = None,
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
            raise InvalidInputError("give both test_features and test_labels, or neither")
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
            raise InvalidInputError("train labels contain fewer than 2 classes; at least 2 are needed")
        ds = Dataset(name, x, codes[: len(a)], xt, codes[len(a):], names, items, test_items, info)
        return ds.validate()
    y, names = encode_labels(labels, class_names)
    check_lengths(len(x), len(y))
    if items is not None:
        if len(items) != len(x):
            raise InvalidInputError(f"items has {len(items)} entries but features have {len(x)} rows")
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
    require_regular_file(path, what="labels file")
    if path.suffix == ".npy":
        return load_npy(path)
    try:
        text = path.read_text()
    except UnicodeDecodeError as err:
        raise DataFileError(f"labels file {path} is not text: {err.reason}") from err
    lines = [ln.strip() for ln in text.splitlines()]
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
        raise MissingFileError(f"no such file: {p}")
    require_regular_file(p, what="data file")  # a FIFO would block the reader
    suffix = p.suffix.lower()
    name = name or p.stem
    common: dict[str, Any] = dict(test_size=test_size, random_state=random_state, name=name)
    meta: dict[str, Any] = {"source": str(p), "backbone": "user features"}
    if suffix == ".npy":
        x = load_npy(p)
        if labels is None:
            if labels_path is None:
                for cand in (p.with_name(p.stem + "_labels.npy"), p.with_name(p.stem + ".labels.npy")):
                    if cand.exists():
                        labels_path = cand
                        break
            if labels_path is None:
                raise DataFileError(
                    f"{p} holds features only; pass labels=... or labels_path=... (or put the labels in "
                    f"{p.stem}_labels.npy next to it)"
                )
            labels = _read_labels_file(Path(labels_path))
        return from_arrays(x, labels, class_names, meta=meta, **common)
    if suffix == ".npz":
        z = load_npz(p)
        if "header_json" in z:
            return Dataset.load(p)
        fk = next((k for k in _FEATURE_KEYS if k in z), None)
        lk = next((k for k in _LABEL_KEYS if k in z), None)
        if fk is None:
            raise DataFileError(f"{p} has no 'features' or 'X' array (keys: {sorted(z)})")
        x = z[fk]
        if labels is None:
            if lk is None:
                raise DataFileError(f"{p} has no 'labels' or 'y' array (keys: {sorted(z)}); pass labels=...")
            labels = z[lk]
        if class_names is None and "class_names" in z:
            class_names = [str(c) for c in np.asarray(z["class_names"]).reshape(-1)]
        items = z.get("items")
        return from_arrays(x, labels, class_names, items=items, meta=meta, **common)
    if suffix in (".parquet", ".pq", ".csv", ".tsv", ".txt"):
        df = _read_table(p, suffix)
        if len(df) == 0:
            raise DataFileError(f"{p} has no rows")
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
            ids = [c for c in df.columns if c not in skip and _is_id_column(df[c], c)]
            skip.update(ids)
            candidates = [c for c in df.columns if c not in skip]
            x, used, text_cols = _feature_matrix(df, candidates, p, strict=False)
            if not used:
                raise DataFileError(_no_features_message(p, label_column, ids, text_cols + (
                    [item_column] if item_column else [])))
            if ids:
                warnings.warn(f"{p}: ignoring id column(s) {[str(c) for c in ids]} (an id is not a feature; pass "
                              "feature_columns= to keep them)", stacklevel=2)
            if text_cols:
                warnings.warn(f"{p}: column(s) {text_cols[:10]} hold text, not numbers, and are not used as features "
                              "(pass item_column= to show one while labeling, or feature_columns= to choose)",
                              stacklevel=2)
        else:
            missing = [c for c in feature_columns if c not in df.columns]
            if missing:
                raise DataFileError(f"feature column(s) {missing} not in {p}; columns: {list(df.columns)[:20]}")
            x, used, _ = _feature_matrix(df, list(feature_columns), p, strict=True)
        feature_columns = used
        y = normalize_labels(labels if labels is not None else df[label_column].to_numpy())
        items = df[item_column].tolist() if item_column else None
        meta["feature_columns"] = [str(c) for c in feature_columns][:50]
        if split_column and split_column in df.columns:
            split = df[split_column].astype(str).str.lower().to_numpy()
            bad = sorted(set(split) - {"train", "test"})
            if bad:
                raise DataFileError(f"column {split_column!r} must hold 'train' or 'test', found {bad[:5]}")
            tr, te = split == "train", split == "test"
            return from_arrays(
                x[tr], y[tr], class_names, name=name, items=_take(items, np.flatnonzero(tr)),
                test_features=x[te], test_labels=y[te], test_items=_take(items, np.flatnonzero(te)),
                meta={**meta, "split_column": split_column},
            )
        return from_arrays(x, y, class_names, items=items, meta=meta, **common)
    raise DataFileError(f"unsupported file type {suffix!r} for {p}; use .npy, .npz, .parquet or .csv")


_ID_NAMES = re.compile(r"^(id|idx|index|row|row_?id|row_?num(ber)?|.*_id|.*_idx)$", re.IGNORECASE)


def _is_id_column(col: Any, name: Any) -> bool:
    """Whether ``col`` is an id or a row number rather than a feature: named like one (``id``,
    ``row_id``, ``doc_id``, ...) and holding distinct whole numbers."""
    import pandas as pd

    if not _ID_NAMES.match(str(name)) or not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
        return False
    values = col.to_numpy(dtype=np.float64, na_value=np.nan)
    return bool(np.isfinite(values).all() and (values == np.round(values)).all() and len(np.unique(values)) == len(values))


def _no_features_message(p: Path, label_column: str, ids: list[Any], text_cols: list[Any]) -> str:
    """Why a table gives no features, and how to label it instead."""
    hint = (f"to label raw items, let bayesal embed them: bayesal serve --items {p} --classes A,B,C "
            "(or bayesal label --items ...)")
    texts = sorted({str(c) for c in text_cols if c})
    if ids:
        what = f"its only numeric column(s) {[str(c) for c in ids]} are ids or row numbers, not features"
    else:
        what = f"it has no numeric feature columns besides {label_column!r}"
    if texts:
        what += f"; column(s) {texts[:5]} hold text, which needs embedding first"
    return f"{p} cannot be used as a features file: {what}; {hint}"


_DECIMAL_COMMA = re.compile(r"^\s*[-+]?(\d+,\d*|,\d+)([eE][-+]?\d+)?\s*$")


def _read_table(p: Path, suffix: str) -> Any:
    """A CSV/TSV/Parquet file as a DataFrame; a CSV with decimal commas (``1,5`` in a ``;``-separated
    file) is read with ``decimal=","``. Unreadable files raise :class:`DataFileError`."""
    import pandas as pd

    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(p)
        sep = "\t" if suffix == ".tsv" else _sniff_separator(p)
        df = pd.read_csv(p, sep=sep)
        if sep != "," and any(_all_decimal_commas(df[c]) for c in df.columns if not pd.api.types.is_numeric_dtype(df[c])):
            df = pd.read_csv(p, sep=sep, decimal=",")
        return df
    except (OSError, ValueError, UnicodeDecodeError, MemoryError, RecursionError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise DataFileError(f"could not read {p} as a {suffix.lstrip('.')} table: {first_line(err)}") from err
    except Exception as err:  # noqa: BLE001 - pyarrow/pandas raise many types for a damaged file
        raise DataFileError(f"could not read {p} as a {suffix.lstrip('.')} table: {first_line(err)}") from err


def _all_decimal_commas(col: Any) -> bool:
    values = col.dropna()
    return len(values) > 0 and all(isinstance(v, str) and _DECIMAL_COMMA.match(v) for v in values)


def _feature_matrix(df: Any, columns: list[Any], path: Path, *, strict: bool) -> tuple[np.ndarray, list[str], list[str]]:
    """``(features (N, D) float64, feature names, text columns left out)`` from ``columns`` of ``df``.

    Numeric columns are used as they are; a column of lists/arrays (embeddings stored as lists, e.g.
    Parquet ``list<float>``) becomes one feature per element; a column of numbers written as text is
    parsed. A column that is mostly numbers but has a cell that is not is an error naming the row
    and column (never dropped); with ``strict=False`` a column that is mostly text is returned in the
    third list instead (the caller warns), with ``strict=True`` that is an error too."""
    import pandas as pd

    blocks: list[np.ndarray] = []
    names: list[str] = []
    text_cols: list[str] = []
    for c in columns:
        col = df[c]
        if pd.api.types.is_bool_dtype(col) or pd.api.types.is_numeric_dtype(col):
            blocks.append(col.to_numpy(dtype=np.float64, na_value=np.nan)[:, None])
            names.append(str(c))
            continue
        values = col.to_numpy(dtype=object)
        first = next((v for v in values if v is not None and not (isinstance(v, float) and np.isnan(v))), None)
        if isinstance(first, (list, tuple, np.ndarray)):
            blocks.append(_list_column(values, c, path))
            k = blocks[-1].shape[1]
            names.extend(f"{c}[{j}]" for j in range(k))
            continue
        parsed = pd.to_numeric(col, errors="coerce")
        bad = parsed.isna() & col.notna()
        n_ok = int((parsed.notna()).sum())
        if not bool(bad.any()):
            blocks.append(parsed.to_numpy(dtype=np.float64, na_value=np.nan)[:, None])
            names.append(str(c))
            continue
        if strict or n_ok >= int(bad.sum()):
            row = int(np.flatnonzero(bad.to_numpy())[0])
            where = f"row {row + 1}" + (f" (line {row + 2} of the file)" if path.suffix.lower() != ".parquet" else "")
            hint = (" (the file seems to use decimal commas: save it with decimal points, or as ';'-separated)"
                    if isinstance(values[row], str) and _DECIMAL_COMMA.match(values[row]) else "")
            raise DataFileError(f"{path}: column {str(c)!r} holds {values[row]!r} in {where}, which is not a number"
                                f"{hint}; fix that cell, or pass feature_columns= without this column")
        text_cols.append(str(c))
    if not blocks:
        return np.zeros((len(df), 0)), names, text_cols
    return np.concatenate(blocks, axis=1), names, text_cols


def _list_column(values: np.ndarray, column: Any, path: Path) -> np.ndarray:
    """A column whose cells are equal-length numeric lists/arrays as an ``(N, k)`` array."""
    rows = []
    k = None
    for i, v in enumerate(values):
        if not isinstance(v, (list, tuple, np.ndarray)):
            raise DataFileError(f"{path}: column {str(column)!r} holds lists, but row {i + 1} holds {v!r}")
        try:
            arr = np.asarray(v, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise DataFileError(f"{path}: column {str(column)!r} row {i + 1} holds a list that is not all numbers") from None
        if k is None:
            k = arr.size
        elif arr.size != k:
            raise DataFileError(f"{path}: column {str(column)!r} holds lists of length {k}, but row {i + 1} has "
                                f"{arr.size} elements; every row needs the same length")
        rows.append(arr)
    return np.stack(rows) if rows else np.zeros((0, 0))


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
    raise DataFileError(
        f"{path} has no label column {wanted!r}; columns: {cols[:20]} (pass label_column=..., or "
        "--label-column on the command line; to label unlabeled items, use --items instead of --dataset)"
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

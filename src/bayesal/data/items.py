"""Raw items to label: texts from a table or a text file, images from a folder.

:func:`read_items` reads what a person labels — a CSV/TSV/Parquet/JSONL table with a text column, a
``.txt`` file with one item per line, or a folder of images (searched recursively) — into
:class:`RawItems`: item ids, the texts or image files, and any labels the source already holds (a
label column, or an image's first subfolder named after a class). :func:`embed_items` turns them into
features with a built-in backbone, in resumable shards keyed by the content, so a second open reuses
them and a changed file is embedded again. :func:`read_classes` parses ``--classes`` /
``--classes-file`` (``name`` or ``name: description`` per line).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np

from bayesal.exceptions import DataFileError, InvalidInputError, MissingDependencyError, MissingFileError
from bayesal.utils import require_regular_file, safe_name

from .arrayfiles import first_line
from .backbones import Backbone, get_backbone
from .thumbnails import Thumbnails, content_key

__all__ = [
    "IMAGE_SUFFIXES", "TABLE_SUFFIXES", "ClassList", "RawItems", "ImageFiles", "read_items", "read_classes",
    "items_backbone", "backbone_name", "embed_items", "load_image", "TEXT_BACKBONES", "IMAGE_BACKBONES",
    "class_texts", "zero_shot_head",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".pq", ".jsonl", ".ndjson")
TEXT_BACKBONES = ("minilm",)
IMAGE_BACKBONES = ("efficientnet-lite0", "efficientnet-lite2")
_TEXT_NAMES = ("text", "texts", "sentence", "content", "review", "body", "document", "message", "comment")
LABEL_NAMES = ("label", "labels", "y", "target", "targets", "class", "category")
DISPLAY_SIDE = 256  # longer side of an image as kept for display (the page and the terminal downscale further)


# ------------------------------------------------------------------------------------ classes
@dataclass
class ClassList:
    """Class names with optional one-line descriptions (for a zero-shot prior)."""

    names: list[str]
    descriptions: list[str | None] = field(default_factory=list)


def read_classes(spec: str | None = None, path: str | os.PathLike[str] | None = None) -> ClassList:
    """The classes of ``--classes a,b,c`` or of ``--classes-file`` (one per line, ``name`` or
    ``name: description``; blank lines and lines starting with ``#`` are ignored)."""
    if spec is not None and path is not None:
        raise InvalidInputError("pass --classes or --classes-file, not both")
    names: list[str] = []
    descriptions: list[str | None] = []
    if spec is not None:
        names = [c.strip() for c in spec.split(",")]
        descriptions = [None] * len(names)
    elif path is not None:
        p = Path(path)
        if not p.exists():
            raise MissingFileError(f"no such classes file: {p}")
        require_regular_file(p, what="classes file")
        try:
            lines = p.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as err:
            raise DataFileError(f"classes file {p} is not UTF-8 text: {err.reason}") from err
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, desc = line.partition(":")
            names.append(name.strip())
            descriptions.append(desc.strip() or None if sep else None)
    else:
        return ClassList([], [])
    if any(not n for n in names):
        raise InvalidInputError("a class name is empty (check for doubled or trailing commas)")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InvalidInputError(f"class name(s) {dup[:5]} appear more than once")
    return ClassList(names, descriptions)


def class_texts(classes: ClassList) -> list[str]:
    """What is embedded for each class of a zero-shot head: ``name`` or ``name: description``."""
    descriptions = list(classes.descriptions) + [None] * (len(classes.names) - len(classes.descriptions))
    return [f"{n}: {d}" if d else n for n, d in zip(classes.names, descriptions)]


def zero_shot_head(classes: ClassList, backbone: Backbone, *, scale: float | None = None) -> np.ndarray:
    """A zero-shot head ``(C, D)`` float64 for a text backbone: each class's :func:`class_texts` embedded by
    ``backbone``, unit-normalised and times ``scale`` (default: the backbone's ``logit_scale``), so that
    its logits for a unit-normalised item embedding are ``scale · cos(item, class)`` — the backbone's own
    similarity logits. The mean of the head's prior in a labeling session (docs/method.md)."""
    s = backbone.logit_scale if scale is None else float(scale)
    if s is None or not (s > 0 and np.isfinite(s)):
        raise InvalidInputError(f"the backbone {backbone.name} has no zero-shot logit scale; pass scale > 0")
    if not classes.names:
        raise InvalidInputError("a zero-shot head needs the class names")
    e = np.asarray(backbone.encode(class_texts(classes), progress=False), dtype=np.float64)
    norms = np.linalg.norm(e, axis=1, keepdims=True)
    if not np.all(np.isfinite(e)) or np.any(norms == 0):
        raise InvalidInputError("a class text has no usable embedding (empty or zero vector)")
    return s * e / norms


# ------------------------------------------------------------------------------------ images
def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError as err:
        raise MissingDependencyError(f"reading images needs Pillow ({err}); install it with pip install pillow") from err
    return Image


def load_image(path: Path, *, size: int | None = None, max_side: int | None = None) -> np.ndarray:
    """An image file as ``(H, W, 3)`` uint8 RGB: resized to ``size × size`` (bilinear) or shrunk to at
    most ``max_side`` pixels a side; an unreadable file is a :class:`DataFileError` naming it."""
    image_mod = _pil()
    try:
        with image_mod.open(path) as im:
            im = im.convert("RGB")
            if size is not None:
                im = im.resize((size, size), image_mod.BILINEAR)
            elif max_side is not None and max(im.size) > max_side:
                im.thumbnail((max_side, max_side), image_mod.BILINEAR)
            return np.asarray(im, dtype=np.uint8).copy()
    except (OSError, ValueError, SyntaxError) as err:
        raise DataFileError(f"could not read the image {path}: {first_line(err)}") from err


class ImageFiles(Sequence[np.ndarray]):
    """Image files read on access as ``(H, W, 3)`` uint8 arrays (a slice gives a list).

    ``size`` resizes every image to ``size × size`` (what a backbone takes); otherwise images are
    shrunk to at most ``max_side`` pixels a side for display. ``thumbnails``: the folder of their
    thumbnails (made by :func:`embed_items`; see :meth:`thumbnail_store`).
    """

    def __init__(self, paths: Sequence[Path], *, size: int | None = None, max_side: int = DISPLAY_SIDE,
                 thumbnails: Path | None = None) -> None:
        self.paths = list(paths)
        self.size = size
        self.max_side = max_side
        self.thumbnails = None if thumbnails is None else Path(thumbnails)

    def thumbnail_store(self, fallback: Path | None = None) -> Thumbnails:
        """The thumbnails of these images: in :attr:`thumbnails`, else under ``fallback`` (a folder keyed by
        the paths), else in memory. Files are named by their image's path, so any subset of an image
        folder finds the thumbnails made for the whole folder."""
        if self.thumbnails is not None:
            return Thumbnails(self, self.thumbnails.parent, self.thumbnails.name, names=lambda i: _path_stem(self.paths[i]))
        key = "thumbs-" + content_key(*(str(p) for p in self.paths))
        return Thumbnails(self, fallback, key, names=lambda i: _path_stem(self.paths[i]))

    def __len__(self) -> int:
        return len(self.paths)

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray]: ...

    def __getitem__(self, index: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(index, slice):
            return [self._load(p) for p in self.paths[index]]
        return self._load(self.paths[int(index)])

    def _load(self, path: Path) -> np.ndarray:
        return load_image(path, size=self.size, max_side=None if self.size else self.max_side)


# ------------------------------------------------------------------------------------ reading
@dataclass
class RawItems:
    """What a person labels, read from ``source``.

    ``kind`` is ``"text"`` or ``"image"``; ``ids`` the item ids (an ``id`` column, the line number, or
    the image's path relative to the folder); ``texts`` the texts (text items) or ``paths`` the image
    files (image items); ``labels`` the label each item already has (``None``: none); ``info`` how the
    source was read (JSON-serialisable).
    """

    kind: str
    source: Path
    ids: list[str]
    texts: list[str] | None = None
    paths: list[Path] | None = None
    labels: list[str | None] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    #: the folder of the images' thumbnails, once :func:`embed_items` made it (None: not made yet)
    thumbnails: Path | None = None

    def display_items(self, rows: Sequence[int] | None = None) -> Sequence[Any]:
        """What the labeling views show of the items (of ``rows``, default all): the texts, or the images
        read on access, with their thumbnails."""
        pick = range(len(self.ids)) if rows is None else [int(r) for r in rows]
        if self.kind == "text":
            texts = self.texts or []
            return [texts[i] for i in pick]
        paths = self.paths or []
        return ImageFiles([paths[i] for i in pick], thumbnails=self.thumbnails)

    def locations(self) -> list[str]:
        """Per item: the text, or the image file's path (for exports)."""
        return list(self.texts or []) if self.kind == "text" else [str(p) for p in self.paths or []]

    def digest(self) -> str:
        """sha256 of the content: the ids and texts, or the image files' relative paths and bytes."""
        from .cache import content_hash

        if self.kind == "text":
            return content_hash(self.ids, self.texts or [])
        h = hashlib.sha256()
        for rel, p in zip(self.ids, self.paths or []):
            h.update(rel.encode() + b"\0")
            with open(p, "rb") as f:
                h.update(hashlib.sha256(f.read()).digest())
        return h.hexdigest()


def read_items(path: str | os.PathLike[str], *, text_column: str | None = None, label_column: str | None = None,
               classes: Sequence[str] | None = None) -> RawItems:
    """Read the items at ``path``: a table (CSV/TSV/Parquet/JSONL), a ``.txt`` file or an image folder.

    Parameters
    ----------
    path
        The file or folder.
    text_column
        The table's text column (default: the one text column besides the id and label columns, or
        the one named ``text`` and the like when there are several).
    label_column
        A table column of existing labels (empty cells: unlabeled).
    classes
        For an image folder: an image whose first subfolder is named after one of these classes is
        labeled with it.

    Raises
    ------
    MissingFileError, DataFileError, InvalidInputError
        No such path, an unreadable or empty source, an ambiguous or missing text column.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise MissingFileError(f"no such file or folder: {p}")
    if p.is_dir():
        return _read_image_folder(p.resolve(), classes)
    require_regular_file(p, what="items file")
    suffix = p.suffix.lower()
    if suffix == ".txt":
        if label_column or text_column:
            raise InvalidInputError(f"{p} is a plain text file (one item per line): it has no columns, so "
                                    "--text-column / --label-column do not apply")
        return _read_lines(p.resolve())
    if suffix in TABLE_SUFFIXES:
        return _read_text_table(p.resolve(), suffix, text_column, label_column)
    if suffix in IMAGE_SUFFIXES:
        raise InvalidInputError(f"{p} is one image; pass the folder that holds the images to label")
    raise DataFileError(f"unsupported items file {p} ({suffix or 'no suffix'}); use a .csv, .tsv, .parquet or "
                        ".jsonl table with a text column, a .txt file with one item per line, or a folder of images")


def _read_lines(p: Path) -> RawItems:
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise DataFileError(f"{p} is not UTF-8 text: {err.reason}") from err
    ids, texts = [], []
    for k, line in enumerate(lines, start=1):
        if line.strip():
            ids.append(str(k))  # the line number: stable while lines are only appended
            texts.append(line.strip())
    if not texts:
        raise DataFileError(f"{p} holds no non-empty line to label")
    return RawItems("text", p, ids, texts=texts, labels=[None] * len(texts), info={"format": "lines"})


def _read_table_file(p: Path, suffix: str) -> Any:
    import pandas as pd

    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(p)
        if suffix in (".jsonl", ".ndjson"):
            return pd.read_json(p, lines=True, dtype=False)
        # every cell as text: an id stays "007", a text that looks like a number stays text
        return pd.read_csv(p, sep="\t" if suffix == ".tsv" else ",", dtype=str, keep_default_na=False, na_values=[""])
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - pandas/pyarrow raise many types for a damaged file
        raise DataFileError(f"could not read {p} as a {suffix.lstrip('.')} table: {first_line(err)}") from err


def _is_text(col: Any) -> bool:
    values = col.dropna()
    return len(values) > 0 and all(isinstance(v, str) for v in values) and \
        sum(not _is_number(v) for v in values) > len(values) / 2


def _is_number(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def _read_text_table(p: Path, suffix: str, text_column: str | None, label_column: str | None) -> RawItems:
    df = _read_table_file(p, suffix)
    if len(df) == 0:
        raise DataFileError(f"{p} has no rows")
    cols = [str(c) for c in df.columns]
    df.columns = cols
    for what, name in (("--text-column", text_column), ("--label-column", label_column)):
        if name is not None and name not in cols:
            raise DataFileError(f"{what} {name!r} is not a column of {p}; columns: {cols[:20]}")
    id_col = next((c for c in cols if c.lower() == "id"), None)
    if text_column is None:
        skip = {id_col, label_column} | {c for c in cols if c.lower() in LABEL_NAMES}
        texty = [c for c in cols if c not in skip and _is_text(df[c])]
        named = [c for c in texty if c.lower() in _TEXT_NAMES]
        if len(texty) == 1:
            text_column = texty[0]
        elif len(named) == 1:
            text_column = named[0]
        elif not texty:
            raise DataFileError(f"{p} has no column of text to label (columns: {cols[:20]}); pass --text-column")
        else:
            raise DataFileError(f"{p} has several text columns {texty[:10]}; pass --text-column to choose one")
    if text_column == id_col:
        raise InvalidInputError(f"--text-column {text_column!r} is the id column; choose the column holding the text")
    texts_col = df[text_column]
    empty = texts_col.isna() | (texts_col.astype(str).str.strip() == "")
    if bool(empty.all()):
        raise DataFileError(f"column {text_column!r} of {p} is empty")
    keep = np.flatnonzero(~empty.to_numpy())
    texts = [str(v) for v in texts_col.to_numpy()[keep]]
    if id_col is not None:
        ids = [str(v) for v in df[id_col].to_numpy()[keep]]
        dup = len(set(ids)) != len(ids)
        if dup:
            raise DataFileError(f"column {id_col!r} of {p} repeats an id; ids must be unique (or rename the column)")
    else:
        ids = [str(int(i)) for i in keep]  # the row number (0-based, header excluded)
    labels: list[str | None] = [None] * len(texts)
    if label_column is not None:
        raw = df[label_column].to_numpy()[keep]
        labels = [None if v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip() == "" else str(v).strip()
                  for v in raw]
    info = {"format": "table", "text_column": text_column, "id_column": id_col, "label_column": label_column,
            "skipped_empty": int(empty.sum())}
    return RawItems("text", p, ids, texts=texts, labels=labels, info=info)


def _read_image_folder(root: Path, classes: Sequence[str] | None) -> RawItems:
    paths = sorted((q for q in root.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES and q.is_file()
                    and not any(part.startswith(".") for part in q.relative_to(root).parts)),
                   key=lambda q: q.relative_to(root).as_posix())
    if not paths:
        raise DataFileError(f"{root} holds no images ({', '.join(IMAGE_SUFFIXES)}, searched in subfolders too)")
    ids = [q.relative_to(root).as_posix() for q in paths]
    known = set(classes or [])
    labels: list[str | None] = []
    for rel in ids:
        parts = rel.split("/")
        labels.append(parts[0] if len(parts) > 1 and parts[0] in known else None)
    folders = sorted({rel.split("/")[0] for rel in ids if "/" in rel})
    return RawItems("image", root, ids, paths=paths, labels=labels, info={"format": "images", "subfolders": folders[:1000]})


# ------------------------------------------------------------------------------------ embedding
def backbone_name(kind: str, name: str | None = None) -> str:
    """``name`` if it is a built-in backbone for ``kind`` items (default: MiniLM for text,
    EfficientNet-Lite0 for images); one that does not fit the kind is an error naming those that do."""
    choices = TEXT_BACKBONES if kind == "text" else IMAGE_BACKBONES
    name = name or choices[0]
    if name not in choices:
        raise InvalidInputError(f"backbone {name!r} does not embed {kind} items; choose one of {', '.join(choices)}")
    return name


def items_backbone(kind: str, name: str | None = None) -> Backbone:
    """The built-in backbone ``name`` for ``kind`` items (see :func:`backbone_name`)."""
    return get_backbone(backbone_name(kind, name))


def embed_items(raw: RawItems, backbone: Backbone, cache_root: str | os.PathLike[str], *, progress: bool = True,
                shard_rows: int = 500, batch_size: int = 32) -> np.ndarray:
    """Features ``(N, D)`` float32 of ``raw`` by ``backbone``, in shards under ``cache_root``.

    The shard folder is named by the backbone and a hash of the content: opening the same items again
    reads the shards (an interrupted run continues where it stopped), changed items get a new folder
    (the old ones are removed). Images also get their thumbnails, made once with the features in
    ``cache_root/thumbs-<hash>`` (a folder keyed by the content too) and set as ``raw.thumbnails``.
    """
    from .cache import content_hash
    from .shards import featurize_to_shards

    root = Path(cache_root)
    raw_digest = raw.digest()
    digest = content_hash(backbone.config(), raw_digest)
    out = root / f"{safe_name(backbone.name)}-{digest[:16]}"
    thumbs = root / f"thumbs-{raw_digest[:16]}" if raw.kind == "image" else None
    if root.is_dir():  # embeddings and thumbnails of an earlier version of the items: never read again
        for old in root.iterdir():
            stale = (old.name.startswith(safe_name(backbone.name) + "-") and old.name != out.name) or (
                old.name.startswith("thumbs-") and (thumbs is None or old.name != thumbs.name))
            if old.is_dir() and stale:
                shutil.rmtree(old, ignore_errors=True)
    fresh = not out.exists()
    if raw.kind == "text":
        items: Sequence[Any] = list(raw.texts or [])
    else:
        items = ImageFiles(raw.paths or [], size=int(getattr(backbone, "resolution", 112)))
    import torch

    threads = torch.get_num_threads()
    # the commands run the head on one thread; embedding is the one long step, worth the spare cores
    torch.set_num_threads(max(threads, min(4, os.cpu_count() or 1)))
    try:
        pool = featurize_to_shards(backbone, items, out, shard_rows=shard_rows, batch_size=batch_size,
                                   hash_parts=[digest], progress=progress)
    finally:
        torch.set_num_threads(threads)
    if thumbs is not None:
        raw.thumbnails = thumbs
        if fresh:  # once, with the features: an image is then shown from its thumbnail file (made lazily if
            # missing, e.g. for items embedded before thumbnails were kept)
            ImageFiles(raw.paths or [], thumbnails=thumbs).thumbnail_store().make_all()
    return np.ascontiguousarray(pool.read(0, len(pool)), dtype=np.float32)


def _path_stem(path: Path) -> str:
    """A file name stem for the thumbnail of the image at ``path``."""
    return hashlib.sha256(str(path).encode()).hexdigest()[:24]

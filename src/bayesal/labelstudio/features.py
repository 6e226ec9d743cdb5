"""Features of Label Studio tasks: the item a task references, encoded by a frozen backbone, cached.

Text tasks go through all-MiniLM-L6-v2 (D=384, the backbone of bayesal's text data sets), image
tasks through ImageNet EfficientNet-Lite0 at 112 px (D=1280, that of its image data sets). Nothing is
ever downloaded: an image must be a local file, referenced the way Label Studio references files it
serves itself:

* ``/data/local-files/?d=<relative path>`` (Label Studio's local-files storage) → under ``files_root``;
* ``/data/upload/<project>/<file>`` (files uploaded through Label Studio) → under ``upload_root``
  (``<Label Studio data dir>/media/upload``);
* an absolute path or ``file://`` URL inside one of those roots.

A path that leaves its root (``..``, symlinks) is refused. Features are cached per task content in a
:class:`FeatureStore` (an append-only file in the project's state directory), so a task is encoded once
across predictions and restarts.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import stat
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

import numpy as np

from bayesal.data import Backbone, get_backbone
from bayesal.exceptions import DataFileError, InvalidInputError, MissingDependencyError, StorageError
from bayesal.utils import require_regular_file, storage_error

from .config import ChoicesConfig

__all__ = ["TaskFeaturizer", "FeatureStore", "default_backbone"]

FEATURES_MAGIC = b"BAYESAL-TASK-FEATURES v1 "
#: Largest image (width x height) decoded: a bigger one is refused from its header, before decoding.
MAX_IMAGE_PIXELS = 64_000_000
KEY_BYTES = 16


def default_backbone(kind: str) -> Backbone:
    """The backbone of bayesal's data sets for ``kind`` (``"text"`` or ``"image"``)."""
    if kind == "text":
        return get_backbone("minilm", max_seq_length=128)
    if kind == "image":
        return get_backbone("efficientnet-lite0", resolution=112)
    raise InvalidInputError(f"no backbone for items of kind {kind!r}; use 'text' or 'image'")


class FeatureStore:
    """Append-only cache ``key → float32 vector (D,)`` in one file.

    The file is a header line (magic, D and a digest of the backbone config) followed by fixed-size
    records ``16-byte key || D float32``. A torn last record (crash mid-write) is ignored and cut off
    on open; a file written for another backend or D is set aside as ``<name>.stale`` and rebuilt. It
    is a cache: losing it costs recomputation, never labels.
    """

    def __init__(self, path: str | os.PathLike[str], dim: int, backbone_config: Mapping[str, Any]) -> None:
        self.path = Path(path)
        self.dim = int(dim)
        digest = hashlib.blake2b(json.dumps(dict(backbone_config), sort_keys=True, default=str).encode(), digest_size=8)
        self._header = FEATURES_MAGIC + f"dim={self.dim} backbone={digest.hexdigest()}\n".encode()
        self._record = KEY_BYTES + 4 * self.dim
        self._rows: dict[bytes, np.ndarray] = {}
        self._lock = threading.Lock()
        self._load()

    def _load(self) -> None:
        try:
            raw = require_regular_file(self.path, what="feature cache").read_bytes() if self.path.exists() else b""
            if raw and not raw.startswith(self._header):
                os.replace(self.path, self.path.with_name(self.path.name + ".stale"))
                raw = b""
            if not raw:
                self.path.write_bytes(self._header)
                return
        except OSError as err:
            if isinstance(err, StorageError):
                raise
            raise storage_error("open the feature cache", self.path, err) from err
        body = raw[len(self._header) :]
        n = len(body) // self._record
        arr = np.frombuffer(body[: n * self._record], dtype=np.uint8).reshape(n, self._record)
        for row in arr:
            self._rows[row[:KEY_BYTES].tobytes()] = row[KEY_BYTES:].view(np.float32).copy()
        if len(body) != n * self._record:  # torn tail: cut it so the next record starts aligned
            with open(self.path, "r+b") as fh:
                fh.truncate(len(self._header) + n * self._record)

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: bytes) -> np.ndarray | None:
        return self._rows.get(key)

    def put(self, key: bytes, vector: np.ndarray) -> None:
        vec = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
        if vec.shape[0] != self.dim or len(key) != KEY_BYTES:
            raise InvalidInputError(f"feature cache {self.path} holds {self.dim}-d rows; got a {vec.shape[0]}-d one")
        with self._lock:
            if key in self._rows:
                return
            self._append(key + vec.tobytes())
            self._rows[key] = vec

    def _append(self, record: bytes) -> None:
        """Append one record; after a failed write (a full disk) the file is cut back to whole records,
        so that the records written later stay aligned."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
        except OSError as err:
            raise storage_error("open the feature cache", self.path, err) from err
        try:
            size = os.fstat(fd).st_size
            try:
                written = 0
                while written < len(record):
                    written += os.write(fd, record[written:])
            except OSError as err:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
                raise storage_error("write the feature cache", self.path, err) from err
        finally:
            os.close(fd)


class TaskFeaturizer:
    """Map Label Studio tasks to features ``(N, D)`` for one labeling config.

    Parameters
    ----------
    config:
        The parsed labeling config (which data key holds the item, text or image).
    backbone:
        Frozen feature extractor; :func:`default_backbone` of the config's kind when None.
    files_root:
        Root of Label Studio's local-files storage (``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``).
    upload_root:
        Folder of files uploaded to Label Studio (``<data dir>/media/upload``).
    store:
        Optional :class:`FeatureStore` for the features.
    """

    def __init__(
        self,
        config: ChoicesConfig,
        backbone: Backbone | None = None,
        *,
        files_root: str | os.PathLike[str] | None = None,
        upload_root: str | os.PathLike[str] | None = None,
        store: FeatureStore | None = None,
    ) -> None:
        self.config = config
        self.backbone = backbone if backbone is not None else default_backbone(config.kind)
        self.files_root = Path(files_root).resolve() if files_root else None
        self.upload_root = Path(upload_root).resolve() if upload_root else None
        self.store = store
        self._backbone_key = json.dumps(self.backbone.config(), sort_keys=True, default=str)

    # ------------------------------------------------------------------ items
    def raw_item(self, task: Mapping[str, Any]) -> str:
        """The task's value for the config's data key (text, or an image reference)."""
        data = task.get("data") if isinstance(task, Mapping) else None
        if not isinstance(data, Mapping) or self.config.data_key not in data:
            raise InvalidInputError(
                f"task {task.get('id') if isinstance(task, Mapping) else type(task).__name__!r} has no data[{self.config.data_key!r}] "
                f"that the labeling config's ${self.config.data_key} refers to; import tasks with that key"
            )
        value = data[self.config.data_key]
        if not isinstance(value, str):
            raise InvalidInputError(
                f"task {task.get('id')!r}: data[{self.config.data_key!r}] must be a string, got {type(value).__name__}"
            )
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:  # a lone surrogate (from a "\ud800" escape): no text to encode
            raise InvalidInputError(
                f"task {task.get('id')!r}: data[{self.config.data_key!r}] is not valid Unicode (a lone surrogate at "
                f"character {err.start}); fix the task's text in Label Studio"
            ) from err
        return value

    def image_path(self, ref: str) -> Path:
        """The local file an image reference points to, inside an allowed root."""
        if "\0" in unquote(ref):
            raise DataFileError(f"image {ref[:200]!r} holds a NUL character; no file has such a name")
        parts = urlsplit(ref)
        if parts.path.startswith("/data/local-files") and parts.query:
            rel = parse_qs(parts.query).get("d", [""])[0]
            return self._inside(self.files_root, rel, ref, "--files-root (Label Studio's local files root)")
        if parts.path.startswith("/data/upload/"):
            rel = unquote(parts.path[len("/data/upload/") :])
            return self._inside(self.upload_root, rel, ref, "--upload-root (<Label Studio data dir>/media/upload)")
        if parts.scheme in ("", "file") and os.path.isabs(unquote(parts.path)):
            path = Path(unquote(parts.path)).resolve()
            for root in (self.files_root, self.upload_root):
                if root is not None and path.is_relative_to(root):
                    return path
            raise DataFileError(
                f"image {ref!r} lies outside the allowed folders; pass its folder as --files-root"
            )
        raise DataFileError(
            f"image {ref!r} is not a local file; bayesal never downloads: serve images through Label Studio's "
            "local-files storage or uploads and pass --files-root / --upload-root"
        )

    @staticmethod
    def _inside(root: Path | None, rel: str, ref: str, option: str) -> Path:
        if root is None:
            raise DataFileError(f"image {ref!r} needs {option} to be set when the backend starts")
        path = (root / rel).resolve()
        if not path.is_relative_to(root):
            raise DataFileError(f"image {ref!r} points outside {root}; refusing to read it")
        return path

    def _load_image(self, ref: str) -> np.ndarray:
        path = self.image_path(ref)
        try:
            from PIL import Image
        except ImportError as err:
            raise MissingDependencyError("image tasks need Pillow; install it with `pip install bayesal[images]`") from err
        try:
            require_regular_file(path, what="image")  # a FIFO would block the reader
            with Image.open(path) as im:  # reads the header only: the size is known before decoding
                w, h = im.size
                if w * h > MAX_IMAGE_PIXELS:
                    raise DataFileError(
                        f"image {path} (task reference {ref!r}) is {w} x {h} pixels, over the limit of "
                        f"{MAX_IMAGE_PIXELS:,}; it is not decoded (it is shrunk to 112 px anyway): scale it down"
                    )
                return np.asarray(im.convert("RGB"), dtype=np.uint8)
        except (OSError, ValueError, Image.DecompressionBombError) as err:
            if isinstance(err, DataFileError):
                raise
            raise DataFileError(f"cannot read image {path} (task reference {ref!r}): {err}") from err

    # ------------------------------------------------------------------ features
    def key(self, task: Mapping[str, Any]) -> bytes:
        """Cache key: digest of the backbone config and the task's item (for an image, its path, size
        and modification time, so an edited file is encoded again)."""
        value = self.raw_item(task)
        h = hashlib.blake2b(digest_size=KEY_BYTES)
        h.update(self._backbone_key.encode())
        h.update(self.config.kind.encode() + b"\0")
        if self.config.kind == "image":
            path = self.image_path(value)
            try:
                st = path.stat()
            except OSError as err:
                raise DataFileError(f"cannot read image {path} (task reference {value!r}): {err}") from err
            if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block the reader
                raise DataFileError(f"image {path} (task reference {value!r}) is not a regular file")
            h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}".encode())
        else:
            h.update(value.encode("utf-8", errors="surrogatepass"))
        return h.digest()

    def encode(self, tasks: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Features ``(N, D)`` float32 of ``tasks``, from the store where present."""
        keys = [self.key(t) for t in tasks]
        rows: list[np.ndarray | None] = [self.store.get(k) if self.store is not None else None for k in keys]
        missing = [i for i, r in enumerate(rows) if r is None]
        if missing:
            if self.config.kind == "text":
                new = self.backbone.encode([self.raw_item(tasks[i]) for i in missing], progress=False)
            else:  # images differ in size: one at a time (the backbone resizes each)
                new = np.concatenate(
                    [self.backbone.encode([self._load_image(self.raw_item(tasks[i]))], progress=False) for i in missing]
                )
            for j, i in enumerate(missing):
                rows[i] = new[j]
                if self.store is not None:
                    self.store.put(keys[i], new[j])
        filled = cast("list[np.ndarray]", rows)  # every missing row was encoded above
        dim = self.backbone.dim or (filled[0].shape[0] if filled else 0)
        if not filled:
            return np.zeros((0, dim), dtype=np.float32)
        return np.stack(filled).astype(np.float32, copy=False)

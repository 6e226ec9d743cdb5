"""User data files: every column is used or named, never silently dropped; damaged files give
DataFileError; a dataset header cannot steer the loader."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from bayesal.data import Dataset, from_arrays, load_features
from bayesal.exceptions import DataFileError, InvalidInputError, StorageError


def _frame(n: int = 40, d: int = 6, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(rng.normal(size=(n, d)), columns=[f"f{j}" for j in range(d)])
    return df.assign(label=np.array(["a", "b"])[np.arange(n) % 2])


def test_non_numeric_cell_is_named_not_dropped(tmp_path):
    df = _frame().astype({"f3": object})
    df.loc[16, "f3"] = "abc"
    path = tmp_path / "d.csv"
    df.to_csv(path, index=False)
    with pytest.raises(DataFileError, match=r"column 'f3' holds 'abc' in row 17 \(line 18 of the file\)"):
        load_features(path)
    with pytest.raises(DataFileError, match="column 'f3' holds 'abc'"):
        load_features(path, feature_columns=["f0", "f3"])


def test_numbers_stored_as_text_are_read(tmp_path):
    df = _frame().astype({"f2": str})
    path = tmp_path / "t.parquet"
    df.to_parquet(path)
    assert load_features(path).num_features == 6


def test_text_column_is_named_in_a_warning(tmp_path):
    df = _frame().assign(note=[f"text {i}" for i in range(40)])
    path = tmp_path / "n.csv"
    df.to_csv(path, index=False)
    with pytest.warns(UserWarning, match=r"\['note'\] hold text"):
        ds = load_features(path)
    assert ds.num_features == 6
    assert load_features(path, item_column="note").num_features == 6


def test_decimal_commas_are_detected(tmp_path):
    df = _frame()
    path = tmp_path / "eu.csv"
    df.to_csv(path, index=False, sep=";", decimal=",")
    ds = load_features(path)
    assert ds.num_features == 6
    x = np.sort(np.concatenate([ds.train_features, ds.test_features]).ravel())
    np.testing.assert_allclose(x, np.sort(df[[f"f{j}" for j in range(6)]].to_numpy().ravel()), rtol=1e-6)


def test_list_column_embeddings_are_features(tmp_path):
    rng = np.random.default_rng(0)
    emb = [rng.normal(size=8).astype(np.float32) for _ in range(30)]
    df = pd.DataFrame({"embedding": emb, "label": np.arange(30) % 3})
    path = tmp_path / "e.parquet"
    df.to_parquet(path)
    ds = load_features(path)
    assert ds.num_features == 8
    assert ds.meta["feature_columns"][:2] == ["embedding[0]", "embedding[1]"]
    bad = df.copy()
    bad.at[4, "embedding"] = emb[4][:5]
    bad.to_parquet(path)
    with pytest.raises(DataFileError, match="lists of length 8, but row 5 has 5 elements"):
        load_features(path)


@pytest.mark.parametrize("suffix", [".npz", ".npy", ".parquet", ".csv"])
def test_damaged_files_give_data_file_error(tmp_path, suffix):
    good = tmp_path / f"good{suffix}"
    df = _frame()
    if suffix == ".npz":
        np.savez(good, features=df.iloc[:, :6].to_numpy(), labels=np.arange(40) % 2)
    elif suffix == ".npy":
        np.save(good, df.iloc[:, :6].to_numpy())
    elif suffix == ".parquet":
        df.to_parquet(good)
    else:
        df.to_csv(good, index=False)
    raw = good.read_bytes()
    for k, damaged in enumerate((raw[: len(raw) // 2], b"\x00" * 50, b"PK\x03\x04" + raw[10:200], b"")):
        path = tmp_path / f"bad{k}{suffix}"
        path.write_bytes(damaged)
        if suffix == ".npy":
            np.save(tmp_path / f"bad{k}_labels.npy", np.arange(40) % 2)
        with pytest.raises((DataFileError, InvalidInputError)):
            load_features(path)


def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "data.csv"
    os.mkfifo(fifo)
    with pytest.raises(StorageError, match="FIFO"):
        load_features(fifo)


def _header_file(tmp_path, edit):
    ds = from_arrays(np.random.default_rng(0).normal(size=(30, 3)), np.arange(30) % 2, name="ok")
    path = ds.save(tmp_path / "ds.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(str(arrays["header_json"]))
    edit(header)
    arrays["header_json"] = np.array(header if isinstance(header, str) else json.dumps(header))
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda h: h.update(evil=1), r"unknown header key\(s\) \['evil'\]"),
        (lambda h: h.update(name=5), "'name' must be a str"),
        (lambda h: h.update(version=2), "version 2"),
        (lambda h: h.update(class_names=[1, 2]), "class_names must be strings"),
        (lambda h: h.update(meta="x"), "'meta' must be a dict"),
    ],
)
def test_dataset_header_schema(tmp_path, edit, words):
    with pytest.raises(DataFileError, match=words):
        Dataset.load(_header_file(tmp_path, edit))


def test_deeply_nested_header_is_refused(tmp_path):
    path = _header_file(tmp_path, lambda h: h["meta"].update(x=0))
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["header_json"] = np.array("[" * 100000 + "]" * 100000)
    np.savez(path, **arrays)
    with pytest.raises(DataFileError):
        Dataset.load(path)

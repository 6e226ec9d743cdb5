"""Out-of-core pools (.npy, shard directories, Parquet, Zarr) and resumable featurisation into shards."""

from __future__ import annotations

import json
import pickle
import threading

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bayesal.data.backbones import Backbone, RawBackbone
from bayesal.data.pool import (
    ArrayPool,
    NpyPool,
    ParquetPool,
    Pool,
    PoolColumnsWarning,
    ShardedPool,
    ZarrPool,
    open_pool,
)
from bayesal.data.shards import MANIFEST_NAME, featurize_to_shards, missing_rows
from bayesal.exceptions import DataFileError, InvalidInputError


def _features(n: int = 1037, d: int = 7, seed: int = 0, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(dtype)


def _all_chunks(pool: Pool, **kw) -> np.ndarray:
    offsets, parts = [], []
    for off, block in pool.chunks(**kw):
        offsets.append(off)
        parts.append(block)
    assert offsets == sorted(offsets)
    return np.concatenate(parts) if parts else np.zeros((0, pool.dim), pool.dtype)


@pytest.fixture
def x():
    return _features()


@pytest.fixture
def npy_path(tmp_path, x):
    p = tmp_path / "pool.npy"
    np.save(p, x)
    return p


# ------------------------------------------------------------------------------------ .npy


@pytest.mark.parametrize("chunk_rows", [1, 100, 1037, 5000])
@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_npy_pool_chunks_cover_rows_in_order(npy_path, x, chunk_rows, prefetch):
    pool = NpyPool(npy_path)
    assert pool.shape == x.shape and pool.dtype == np.float32 and len(pool) == 1037
    blocks = list(pool.chunks(chunk_rows, prefetch=prefetch))
    assert all(len(b) <= chunk_rows for _, b in blocks)
    assert [o for o, _ in blocks] == list(range(0, 1037, chunk_rows))
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), x)


def test_npy_pool_take_slice_split(npy_path, x):
    pool = NpyPool(npy_path)
    idx = np.array([1036, 0, 5, 5, 400, 3, 1000])
    np.testing.assert_array_equal(pool.take(idx), x[idx])
    np.testing.assert_array_equal(Pool.take(pool, idx), x[idx])  # generic run-reading gather
    np.testing.assert_array_equal(pool.slice(10, 20).to_numpy(), x[10:20])
    np.testing.assert_array_equal(pool.slice(10, 500).slice(5, 7).to_numpy(), x[15:17])
    parts = pool.split(3)
    assert len(parts) == 3 and sum(len(p) for p in parts) == 1037
    np.testing.assert_array_equal(np.concatenate([p.to_numpy() for p in parts]), x)
    np.testing.assert_array_equal(_all_chunks(pool, chunk_rows=100, start=50, stop=333), x[50:333])
    with pytest.raises(InvalidInputError, match="outside"):
        pool.read(0, 2000)
    with pytest.raises(InvalidInputError, match="indices"):
        pool.take([1037])


def test_npy_pool_rejects_bad_files(tmp_path):
    np.save(tmp_path / "ints.npy", np.zeros((4, 3), dtype=np.int64))
    with pytest.raises(DataFileError, match="float32 or float64"):
        NpyPool(tmp_path / "ints.npy")
    np.save(tmp_path / "cube.npy", np.zeros((2, 3, 4), dtype=np.float32))
    with pytest.raises(DataFileError, match="2-D"):
        NpyPool(tmp_path / "cube.npy")
    np.save(tmp_path / "fortran.npy", np.asfortranarray(np.zeros((4, 3), dtype=np.float32)))
    with pytest.raises(DataFileError, match="Fortran"):
        NpyPool(tmp_path / "fortran.npy")
    np.save(tmp_path / "cut.npy", np.zeros((100, 3), dtype=np.float32))
    raw = (tmp_path / "cut.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(raw[:-10])
    with pytest.raises(DataFileError, match="truncated"):
        NpyPool(tmp_path / "cut.npy")
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(DataFileError, match="not a readable .npy"):
        NpyPool(tmp_path / "junk.npy")


def test_prefetch_keeps_at_most_prefetch_plus_one_chunks_alive(x):
    """Bounded memory: the reader never runs more than ``prefetch + 1`` chunks ahead of the consumer."""

    class Counting(ArrayPool):
        def __init__(self, a):
            super().__init__(a)
            self.reads = 0
            self.lock = threading.Lock()

        def read(self, start, stop):
            with self.lock:
                self.reads += 1
            return super().read(start, stop)

    pool = Counting(x)
    consumed = 0
    ahead = []
    for _, _block in pool.chunks(10, prefetch=2):
        consumed += 1
        threading.Event().wait(0.002)  # give the reader time to run ahead if it could
        ahead.append(pool.reads - consumed)
    assert consumed == 104 and max(ahead) <= 2
    # abandoning the iteration stops the reader thread
    it = pool.chunks(10, prefetch=2)
    next(it)
    it.close()
    assert not any(t.name == "bayesal-pool-prefetch" for t in threading.enumerate())


def test_reader_errors_reach_the_consumer(x):
    class Failing(ArrayPool):
        def read(self, start, stop):
            if start >= 500:
                raise OSError("disk gone")
            return super().read(start, stop)

    with pytest.raises(OSError, match="disk gone"):
        list(Failing(x).chunks(100, prefetch=1))


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 300), d=st.integers(1, 5), chunk=st.integers(1, 400), k=st.integers(0, 50),
       seed=st.integers(0, 2**16))
def test_any_chunking_and_gather_equal_the_array(n, d, chunk, k, seed):
    a = _features(n, d, seed)
    idx = np.random.default_rng(seed).integers(0, n, size=k)
    for pool in (ArrayPool(a), ShardedPool([ArrayPool(a[: n // 2]), ArrayPool(a[n // 2 :])]) if n > 1 else ArrayPool(a)):
        np.testing.assert_array_equal(_all_chunks(pool, chunk_rows=chunk), a)
        np.testing.assert_array_equal(Pool.take(pool, idx), a[idx])


# ------------------------------------------------------------------------- shards, Parquet, Zarr


def test_shard_directory_of_npy_files(tmp_path, x):
    d = tmp_path / "shards"
    d.mkdir()
    for k, (s, e) in enumerate([(0, 300), (300, 301), (301, 1037)]):
        np.save(d / f"part-{k:03d}.npy", x[s:e])
    pool = open_pool(d)
    assert isinstance(pool, ShardedPool) and pool.shape == x.shape and len(pool.shards()) == 3
    assert pool.shard_offsets().tolist() == [0, 300, 301, 1037]
    np.testing.assert_array_equal(_all_chunks(pool, chunk_rows=128), x)
    np.testing.assert_array_equal(pool.read(250, 400), x[250:400])
    np.testing.assert_array_equal(pool.take([1000, 300, 2]), x[[1000, 300, 2]])
    (d / "extra.parquet").write_bytes(b"")
    with pytest.raises(DataFileError, match="both .npy and .parquet"):
        open_pool(d)


def test_shards_must_share_their_width(tmp_path):
    with pytest.raises(DataFileError, match="widths"):
        ShardedPool([ArrayPool(np.zeros((2, 3))), ArrayPool(np.zeros((2, 4)))])
    with pytest.raises(DataFileError, match="no .npy or .parquet"):
        ShardedPool.from_dir(tmp_path)


def test_parquet_pools_list_column_and_float_columns(tmp_path, x):
    list_dir = tmp_path / "lists"
    list_dir.mkdir()
    for k, (s, e) in enumerate([(0, 500), (500, 1037)]):
        table = pa.table({"id": np.arange(s, e), "features": list(x[s:e])})
        pq.write_table(table, list_dir / f"part-{k}.parquet", row_group_size=128)
    pool = open_pool(list_dir)
    assert pool.shape == x.shape and pool.dtype == np.float32
    np.testing.assert_array_equal(_all_chunks(pool, chunk_rows=100), x)
    np.testing.assert_array_equal(pool.take([3, 1036, 700]), x[[3, 1036, 700]])

    cols = pd.DataFrame(x.astype(np.float64), columns=[f"f{i}" for i in range(7)]).assign(label=np.arange(1037) % 3)
    cols.to_parquet(tmp_path / "cols.parquet", row_group_size=200)
    with pytest.warns(PoolColumnsWarning, match="'label'"):  # the int label column is skipped, with a word
        pool = open_pool(tmp_path / "cols.parquet")
    assert isinstance(pool, ParquetPool) and pool.dim == 7 and pool.dtype == np.float64
    assert pool.other_columns == ["label"]
    np.testing.assert_allclose(pool.read(190, 610), x[190:610].astype(np.float64))

    pd.DataFrame({"a": ["x", "y"]}).to_parquet(tmp_path / "text.parquet")
    with pytest.raises(DataFileError, match="no float columns"):
        ParquetPool(tmp_path / "text.parquet")


def test_zarr_pool(tmp_path, x):
    zarr = pytest.importorskip("zarr", reason="Zarr pools need the zarr extra (pip install bayesal[zarr])")
    z = zarr.open_array(str(tmp_path / "pool.zarr"), mode="w", shape=x.shape, chunks=(100, 7), dtype="float32")
    z[:] = x
    pool = open_pool(tmp_path / "pool.zarr")
    assert isinstance(pool, ZarrPool) and pool.shape == x.shape
    assert pool.default_chunk_rows() % 100 == 0
    np.testing.assert_array_equal(_all_chunks(pool, chunk_rows=250), x)
    np.testing.assert_array_equal(pool.take([5, 999, 5]), x[[5, 999, 5]])
    clone = pickle.loads(pickle.dumps(pool))  # sent to workers without an open handle
    np.testing.assert_array_equal(clone.read(0, 10), x[:10])
    np.testing.assert_array_equal(open_pool(zarr.open_array(str(tmp_path / "pool.zarr"), mode="r")).read(7, 9), x[7:9])


def test_a_parquet_text_column_beside_float_features_is_named_not_dropped_silently(tmp_path, x):
    frame = pd.DataFrame(x[:20, :3], columns=["f0", "f1", "f2"]).assign(text=[f"doc {i}" for i in range(20)])
    frame.to_parquet(tmp_path / "p.parquet")
    with pytest.warns(PoolColumnsWarning, match=r"'text' \((large_)?string\).*not read.*items"):
        pool = open_pool(tmp_path / "p.parquet")
    assert pool.dim == 3 and pool.other_columns == ["text"]
    np.testing.assert_array_equal(pool.to_numpy(), x[:20, :3])


def test_a_zarr_pool_with_a_damaged_chunk_is_a_data_file_error(tmp_path, x):
    zarr = pytest.importorskip("zarr", reason="Zarr pools need the zarr extra (pip install bayesal[zarr])")
    z = zarr.open_array(str(tmp_path / "pool.zarr"), mode="w", shape=x.shape, chunks=(100, 7), dtype="float32")
    z[:] = x
    chunk_files = sorted(p for p in (tmp_path / "pool.zarr").rglob("*")
                         if p.is_file() and not p.name.startswith(".") and not p.name.endswith(".json"))
    chunk_files[3].write_bytes(b"not a compressed chunk")
    pool = open_pool(tmp_path / "pool.zarr")
    np.testing.assert_array_equal(pool.read(0, 100), x[:100])  # the intact chunks still read
    with pytest.raises(DataFileError, match="chunk is damaged"):
        pool.to_numpy()


def test_a_fifo_among_the_zarr_files_is_refused_without_blocking(tmp_path, x):
    import os
    import signal

    zarr = pytest.importorskip("zarr", reason="Zarr pools need the zarr extra (pip install bayesal[zarr])")
    z = zarr.open_array(str(tmp_path / "pool.zarr"), mode="w", shape=x.shape, chunks=(100, 7), dtype="float32")
    z[:] = x
    chunk = next(p for p in sorted((tmp_path / "pool.zarr").rglob("*"))
                 if p.is_file() and not p.name.startswith(".") and not p.name.endswith(".json"))
    chunk.unlink()
    os.mkfifo(chunk)  # Zarr's reader threads would wait on it forever
    signal.alarm(20)
    try:
        with pytest.raises(DataFileError, match="not a regular file"):
            open_pool(tmp_path / "pool.zarr").to_numpy()
    finally:
        signal.alarm(0)


def test_pools_pickle_without_their_data(npy_path, x):
    pool = open_pool(npy_path)
    blob = pickle.dumps(pool)
    assert len(blob) < 2000
    np.testing.assert_array_equal(pickle.loads(blob).read(100, 110), x[100:110])


def test_open_pool_inputs(tmp_path, x):
    import torch

    assert isinstance(open_pool(x), ArrayPool)
    np.testing.assert_array_equal(open_pool(torch.from_numpy(x)).read(0, 3), x[:3])
    pool = open_pool(x)
    assert open_pool(pool) is pool
    with pytest.raises(DataFileError, match="no such file"):
        open_pool(tmp_path / "missing.npy")
    (tmp_path / "a.txt").write_text("1,2")
    with pytest.raises(DataFileError, match="unknown pool format"):
        open_pool(tmp_path / "a.txt")
    with pytest.raises(InvalidInputError, match="2-D"):
        open_pool(np.zeros(5))


# --------------------------------------------------------------------------- featurisation


class CountingBackbone(Backbone):
    """Raw pixels, counting the items it encodes; fails after ``fail_after`` items when set."""

    name = "counting"

    def __init__(self, dim: int, fail_after: int | None = None) -> None:
        self.dim = dim
        self.encoded = 0
        self.fail_after = fail_after

    def config(self):
        return {"name": self.name, "dim": self.dim}

    def encode(self, items, batch_size=64, progress=True):
        if self.fail_after is not None and self.encoded + len(items) > self.fail_after:
            raise KeyboardInterrupt  # an interruption in the middle of a shard
        self.encoded += len(items)
        return np.asarray(items, dtype=np.float32).reshape(len(items), -1) * 2.0


def test_featurisation_writes_shards_and_resumes_after_interruption(tmp_path):
    items = _features(950, 6, seed=3)
    out = tmp_path / "feats"
    with pytest.raises(KeyboardInterrupt):
        featurize_to_shards(CountingBackbone(6, fail_after=520), items, out, shard_rows=200, batch_size=16,
                            progress=False)
    done = sorted(p.name for p in out.glob("shard-*.npy"))
    assert done == ["shard-000000.npy", "shard-000001.npy"]  # finished shards are on disk, no partial ones
    assert not list(out.glob(".*tmp"))
    assert missing_rows(out, 950, 200, 6) == 550
    bb = CountingBackbone(6)
    pool = featurize_to_shards(bb, items, out, shard_rows=200, batch_size=16, progress=False)
    assert bb.encoded == 550  # only the missing shards were encoded
    np.testing.assert_array_equal(pool.to_numpy(), items * 2.0)
    assert len(pool.shards()) == 5 and missing_rows(out, 950, 200, 6) == 0
    again = CountingBackbone(6)
    featurize_to_shards(again, items, out, shard_rows=200, progress=False)
    assert again.encoded == 0
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["n_items"] == 950 and manifest["backbone"]["name"] == "counting"


def test_featurisation_redoes_a_torn_shard_and_refuses_foreign_directories(tmp_path):
    items = _features(300, 4, seed=1)
    out = tmp_path / "feats"
    featurize_to_shards(RawBackbone(dim=4), items, out, shard_rows=100, progress=False)
    shard = out / "shard-000001.npy"
    shard.write_bytes(shard.read_bytes()[:-40])  # torn write from another tool
    pool = featurize_to_shards(RawBackbone(dim=4), items, out, shard_rows=100, progress=False)
    np.testing.assert_array_equal(pool.to_numpy(), items)
    with pytest.raises(DataFileError, match="other items or another backbone"):
        featurize_to_shards(RawBackbone(dim=4), items[:200], out, shard_rows=100, progress=False)
    with pytest.raises(DataFileError, match="other items or another backbone"):
        featurize_to_shards(RawBackbone(scale=2.0, dim=4), items, out, shard_rows=100, progress=False)
    with pytest.raises(InvalidInputError, match="empty"):
        featurize_to_shards(RawBackbone(dim=4), items[:0], tmp_path / "empty", progress=False)


@pytest.mark.parametrize("bad", [[2.7], [True, False], ["3"], [[0, 1], [2, 3]], np.array([1.0])])
def test_take_refuses_what_is_not_a_vector_of_row_numbers(tmp_path, bad):
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    np.save(tmp_path / "x.npy", x)
    for pool in (open_pool(x), open_pool(tmp_path / "x.npy")):
        with pytest.raises(InvalidInputError, match="row indices"):
            pool.take(bad)
        np.testing.assert_array_equal(pool.take(np.array([3, 1], dtype=np.int32)), x[[3, 1]])
        np.testing.assert_array_equal(pool.take([]), x[[]])
        with pytest.raises(InvalidInputError, match="chunk_rows"):
            list(pool.chunks(2.5))


def _shard_dir(tmp_path, n=25, rows=10, dim=3):
    import json as _json

    from bayesal.data.pool import MANIFEST_NAME, shard_name, shard_plan

    d = tmp_path / "shards"
    d.mkdir()
    x = np.arange(n * dim, dtype=np.float32).reshape(n, dim)
    for k, (s, e) in enumerate(shard_plan(n, rows)):
        np.save(d / shard_name(k), x[s:e])
    (d / MANIFEST_NAME).write_text(_json.dumps({"format": 1, "n_items": n, "shard_rows": rows, "backbone": {},
                                                 "content_sha256": "x"}))
    return d, x


def test_a_shard_directory_opens_exactly_the_shards_its_manifest_lists(tmp_path):
    d, x = _shard_dir(tmp_path)
    np.save(d / "stray.npy", np.ones((10, 3), dtype=np.float32))  # not a shard of the manifest: not read
    pool = open_pool(d)
    assert pool.n_rows == 25
    np.testing.assert_array_equal(pool.read(0, 25), x)


def test_a_missing_or_short_shard_is_an_error_not_fewer_rows(tmp_path):
    d, x = _shard_dir(tmp_path)
    (d / "shard-000002.npy").unlink()
    with pytest.raises(DataFileError, match="shard-000002.npy .*missing"):
        open_pool(d)
    np.save(d / "shard-000002.npy", x[20:22])
    with pytest.raises(DataFileError, match="holds 2 rows, the manifest plans 5"):
        open_pool(d)


@pytest.mark.parametrize("name", ["f.npy", "f.parquet", "shards/b.npy"])
def test_a_fifo_in_place_of_a_pool_file_is_refused_without_blocking(tmp_path, name):
    import os
    import signal

    (tmp_path / "shards").mkdir()
    np.save(tmp_path / "shards" / "a.npy", np.zeros((3, 2), dtype=np.float32))
    os.mkfifo(tmp_path / name)  # opening it for reading would wait for a writer forever
    target = tmp_path / ("shards" if name.startswith("shards") else name)
    signal.alarm(20)  # a regression hangs: fail it instead
    try:
        with pytest.raises(DataFileError, match="FIFO"):
            open_pool(target)
    finally:
        signal.alarm(0)

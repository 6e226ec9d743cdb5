"""Results files: concurrent writers, torn tails, content fingerprints and output checks before compute."""

from __future__ import annotations

import errno
import multiprocessing as mp
import os
import warnings

import numpy as np
import pandas as pd
import pytest

from bayesal.data import from_arrays
from bayesal.exceptions import ResultsFileError, StorageError
from bayesal.experiments import results as res
from bayesal.experiments import runner as loop
from bayesal.experiments.runner import ALConfig, run_experiment
from bayesal.laplace import HeadConfig, PosteriorOptions


def _rows(seed: int, n: int = 5) -> list[dict]:
    return [{"strategy": "s", "seed": seed, "cycle": k, "accuracy": 0.1 * k} for k in range(n)]


def _writer(path: str, seeds: list[int]) -> None:
    for s in seeds:
        res.append_results(_rows(s), path)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_concurrent_writers_lose_no_rows(tmp_path, suffix):
    path = str(tmp_path / f"r{suffix}")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(path, list(range(k, 40, 4)))) for k in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    df = res.read_results(path)
    assert len(df) == 40 * 5 and sorted(df.seed.unique()) == list(range(40))
    assert not list(tmp_path.glob(".*.tmp"))


def test_torn_csv_tail_is_ignored_then_repaired(tmp_path):
    path = tmp_path / "r.csv"
    res.append_results(_rows(0), path)
    with open(path, "ab") as f:
        f.write(b"s,1,0,0.")  # a run cut off by a crash / full disk
    with pytest.warns(res.TornTailWarning, match="incomplete line"):
        assert len(res.read_results(path)) == 5
    res.append_results(_rows(1), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        df = res.read_results(path)
    assert len(df) == 10 and list(df.seed.unique()) == [0, 1]


def test_torn_header_only(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes(b"strategy,se")
    res.append_results(_rows(0), path)
    assert len(res.read_results(path)) == 5


@pytest.mark.parametrize("content", [b"x", b"notes without a line end", b"PAR1\x15\x04\x15\x00binary", b"\n", b"\n\xc3\xaf]\xf1\xbc\x8a\x86", b"  \r\nnotes"])
def test_a_file_that_is_not_a_results_file_is_never_cut(tmp_path, content):
    """Without a line end (or with an empty first line) such a file looked like an empty results file with
    a torn tail."""
    path = tmp_path / "notes.csv"
    path.write_bytes(content)
    with pytest.raises(ResultsFileError, match="not a bayesal results file.*untouched"):
        res.append_results(_rows(0), path)
    assert path.read_bytes() == content


def test_a_run_refuses_a_foreign_csv_before_any_compute(tmp_path):
    from bayesal.experiments import check_run_request

    path = tmp_path / "notes.csv"
    path.write_bytes(b"x")
    with pytest.raises(ResultsFileError, match="not a bayesal results file"):
        check_run_request(["random"], path)
    assert path.read_bytes() == b"x"


def test_a_parquet_file_named_csv_is_refused_untouched(tmp_path):
    real = tmp_path / "r.parquet"
    res.append_results(_rows(0), real)
    fake = tmp_path / "r.csv"
    fake.write_bytes(real.read_bytes())
    with pytest.raises(ResultsFileError):
        res.append_results(_rows(1), fake)
    assert fake.read_bytes() == real.read_bytes()


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_disk_full_leaves_results_as_they_were(tmp_path, monkeypatch, suffix):
    path = tmp_path / f"r{suffix}"
    res.append_results(_rows(0), path)
    before = path.read_bytes()
    real_write = os.write

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(StorageError, match="disk is full"):
        res.append_results(_rows(1), path)
    assert path.read_bytes() == before
    monkeypatch.setattr(os, "write", real_write)
    res.append_results(_rows(1), path)  # space is back
    assert len(res.read_results(path)) == 10


def test_damaged_or_edited_files_are_refused(tmp_path):
    bad = tmp_path / "r.parquet"
    bad.write_bytes(b"PAR1 garbage")
    with pytest.raises(ResultsFileError, match="could not read results file"):
        res.read_results(bad)
    edited = tmp_path / "e.csv"
    df = pd.DataFrame([{c: "three" if c == "cycle" else 0 for c in res.RESULT_COLUMNS}])
    df.to_csv(edited, index=False)
    with pytest.raises(ResultsFileError, match="column 'cycle' holds 'three' in row 1"):
        res.check_results_frame(res.read_results(edited), edited)
    fifo = tmp_path / "f.csv"
    os.mkfifo(fifo)
    with pytest.raises(StorageError, match="FIFO"):
        res.read_results(fifo)  # never blocks on a FIFO


def _dataset(shift: float):
    rng = np.random.default_rng(0)
    y = np.arange(120) % 3
    x = rng.normal(size=(120, 4)) + y[:, None] * shift
    return from_arrays(x, y, name="train")


def test_runs_are_keyed_by_data_content_not_name(tmp_path):
    out = tmp_path / "r.csv"
    cfg = ALConfig(batch_size=5, cycles=1, candidate_size=50, posterior=PosteriorOptions(head=HeadConfig(epochs=5)))
    v1, v2 = _dataset(3.0), _dataset(0.0)
    assert v1.name == v2.name and res.data_fingerprint(v1) != res.data_fingerprint(v2)
    a = run_experiment(v1, ["random"], cfg, [0], out=out, progress=False)
    b = run_experiment(v2, ["random"], cfg, [0], out=out, progress=False)
    assert b.attrs["skipped_runs"] == 0  # new data: computed, not v1's rows
    assert not np.allclose(a.accuracy.to_numpy(), b.accuracy.to_numpy())
    c = run_experiment(v2, ["random"], cfg, [0], out=out, progress=False)
    assert c.attrs["skipped_runs"] == 1
    from bayesal.experiments.plotting import aulc_table

    tab = aulc_table(res.read_results(out))
    assert len(tab) == 2 and all("[data " in d for d in tab.dataset)  # two data versions, never pooled


def test_output_checked_before_compute(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("computed before checking the output location")

    monkeypatch.setattr(loop, "run_active_learning", boom)
    cfg = ALConfig(batch_size=5, cycles=1, candidate_size=50)
    ds = _dataset(3.0)
    blocker = tmp_path / "f"
    blocker.write_text("a file")
    with pytest.raises(StorageError, match="is a file, not a directory"):
        run_experiment(ds, ["random"], cfg, [0], out=blocker / "r.parquet", progress=False)
    (tmp_path / "d.parquet").mkdir()
    with pytest.raises(StorageError, match="is a directory"):
        run_experiment(ds, ["random"], cfg, [0], out=tmp_path / "d.parquet", progress=False)
    real_open = os.open

    def read_only(path, flags, *a, **k):
        if str(path).startswith(str(tmp_path / "ro")) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *a, **k)

    (tmp_path / "ro").mkdir()
    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(StorageError, match="read-only"):
        run_experiment(ds, ["random"], cfg, [0], out=tmp_path / "ro" / "r.csv", progress=False)

"""Fuzz families: for every file format bayesal reads (and the CLI), generated inputs are fed to the
reader and each outcome is counted in a :class:`faultkit.Tally`: a bayesal error or a correct load is
fine; another exception type, a wrong load (a column dropped, rows lost) or a hang is not.

Each family is ``family(tally, workdir, n)`` and tries ``n`` hypothesis-generated inputs
(derandomized: the same inputs on every run).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from faultkit import Tally
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bayesal.data import Dataset, from_arrays, load_features
from bayesal.data.cache import CACHE_FORMAT, CorruptCacheWarning, FeatureCache
from bayesal.exceptions import DataFileError
from bayesal.experiments.results import RESULT_COLUMNS, check_results_frame, read_results


def _settings(n: int) -> settings:
    return settings(max_examples=n, deadline=None, database=None, derandomize=True,
                    suppress_health_check=list(HealthCheck), print_blob=False)


# ------------------------------------------------------------------------------- byte mutations
@st.composite
def mutated(draw: Any, original: bytes) -> bytes:
    """``original`` truncated, with bytes flipped, inserted or deleted, or replaced by junk."""
    kind = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "junk", "splice"]))
    data = bytearray(original)
    if kind == "truncate":
        return bytes(data[: draw(st.integers(0, len(data)))])
    if kind == "junk":
        return draw(st.binary(max_size=4 * len(original) + 16))
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif kind == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        else:
            data[pos : pos + 8] = draw(st.sampled_from([b"\n", b",", b";", b'"', b"\x00", b"nan", b"-1e400", b"abc"]))
    return bytes(data)


def _quiet(fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn()
    return run


# ------------------------------------------------------------------------------------ results
def _results_frame(n_runs: int = 3) -> pd.DataFrame:
    rows = []
    for s in range(n_runs):
        for c in range(3):
            row = {k: 0.5 for k in RESULT_COLUMNS}
            row.update(strategy="margin", seed=s, cycle=c, num_labels=5 * (c + 1), dataset="d",
                       data_fingerprint="ab" * 10, batch_size=5, config="{'batch_size': 5}")
            rows.append(row)
    return pd.DataFrame(rows)[list(RESULT_COLUMNS)]


def _results_reader(path: Path) -> Callable[[], Any]:
    def read() -> Any:
        df = read_results(path)
        if len(df.columns):
            check_results_frame(df, path)
        return df
    return _quiet(read)


def fuzz_results_csv(tally: Tally, workdir: Path, n: int) -> None:
    original = _results_frame().to_csv(index=False).encode()
    path = workdir / "fuzz.csv"

    @given(mutated(original))
    @_settings(n)
    def run(data: bytes) -> None:
        path.write_bytes(data)
        # a load is correct if it kept every complete original row it could parse (no row invented)
        tally.attempt("results csv", _results_reader(path), lambda df: len(df) <= 9 + data.count(b"\n"))

    run()


def fuzz_results_parquet(tally: Tally, workdir: Path, n: int) -> None:
    buf = io.BytesIO()
    _results_frame().to_parquet(buf, index=False)
    original = buf.getvalue()
    path = workdir / "fuzz.parquet"

    @given(mutated(original))
    @_settings(n)
    def run(data: bytes) -> None:
        path.write_bytes(data)
        tally.attempt("results parquet", _results_reader(path),
                      lambda df: data != original or len(df) == 9)

    run()


# ---------------------------------------------------------------------------------- data files
@st.composite
def tables(draw: Any) -> tuple[pd.DataFrame, dict[str, Any], int]:
    """A feature table with quirks: ``(frame, to_csv options, number of numeric feature columns)``."""
    n = draw(st.integers(4, 30))
    d = draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    scale = draw(st.sampled_from([1.0] * 6 + [1e-30, 1e30, 1e200]))
    df = pd.DataFrame(rng.normal(size=(n, d)) * scale, columns=[f"f{j}" for j in range(d)])
    df["label"] = np.array(["a", "b", "c"])[np.arange(n) % draw(st.sampled_from([1, 2, 2, 3, 3]))]
    quirk = draw(st.sampled_from(["none"] * 4 + ["bad_cell", "nan_cell", "text_col", "bool_col", "int_col"]))
    numeric = d
    if quirk == "bad_cell":
        col = f"f{draw(st.integers(0, d - 1))}"
        df[col] = df[col].astype(object)
        df.loc[draw(st.integers(0, n - 1)), col] = draw(st.sampled_from(["abc", "1.2.3", "--", "x1", "1,5e"]))
    elif quirk == "nan_cell":
        df.loc[draw(st.integers(0, n - 1)), f"f{draw(st.integers(0, d - 1))}"] = np.nan
    elif quirk == "text_col":
        df["note"] = [f"word {i}" for i in range(n)]
    elif quirk == "bool_col":
        df["flag"] = np.arange(n) % 2 == 0
        numeric += 1
    elif quirk == "int_col":
        df["count"] = np.arange(n)
        numeric += 1
    sep = draw(st.sampled_from([",", ";", "\t", "|"]))
    decimal = "," if sep in (";", "\t", "|") and draw(st.booleans()) else "."
    return df, {"sep": sep, "decimal": decimal}, numeric


def _dataset_check(expected_d: int, expected_n: int) -> Callable[[Any], bool]:
    def check(ds: Any) -> bool:
        ok = ds.num_features == expected_d and ds.num_train + ds.num_test == expected_n
        return ok and bool(np.isfinite(ds.train_features).all())
    return check


def fuzz_data_csv(tally: Tally, workdir: Path, n: int) -> None:
    path = workdir / "fuzz_data.csv"

    @given(tables())
    @_settings(n)
    def run(spec: tuple[pd.DataFrame, dict[str, Any], int]) -> None:
        df, opts, numeric = spec
        df.to_csv(path, index=False, **opts)
        tally.attempt("data csv", _quiet(lambda: load_features(path)), _dataset_check(numeric, len(df)))

    run()


def fuzz_data_parquet(tally: Tally, workdir: Path, n: int) -> None:
    path = workdir / "fuzz_data.parquet"

    @given(tables(), st.integers(0, 4), st.booleans())
    @_settings(n)
    def run(spec: tuple[pd.DataFrame, dict[str, Any], int], k: int, ragged: bool) -> None:
        df, _, numeric = spec
        df = df.astype({c: str for c in df.columns if df[c].dtype == object})  # Parquet: one type per column
        if k:  # an embedding stored as a list column
            rng = np.random.default_rng(k)
            emb = [rng.normal(size=k) for _ in range(len(df))]
            if ragged and len(df) > 1:
                emb[-1] = emb[-1][:-1]
            df = df.assign(emb=emb)
            numeric += k
        df.to_parquet(path)
        tally.attempt("data parquet", _quiet(lambda: load_features(path)), _dataset_check(numeric, len(df)))

    run()


def fuzz_data_npz(tally: Tally, workdir: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(buf, features=rng.normal(size=(20, 3)), labels=np.arange(20) % 2)
    original = buf.getvalue()
    path = workdir / "fuzz_data.npz"

    @given(mutated(original))
    @_settings(n)
    def run(data: bytes) -> None:
        path.write_bytes(data)
        tally.attempt("data npz", _quiet(lambda: load_features(path)), _dataset_check(3, 20))

    run()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


def fuzz_dataset_header(tally: Tally, workdir: Path, n: int) -> None:
    ds = from_arrays(np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 2, name="ok")
    path = ds.save(workdir / "fuzz_ds.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(str(arrays["header_json"]))

    @given(st.sampled_from(sorted(header) + ["extra", "name"]), json_values, st.integers(0, 3))
    @_settings(n)
    def run(key: str, value: Any, depth: int) -> None:
        h = dict(header)
        for _ in range(depth * 400):  # deeply nested values
            value = [value]
        h[key] = value
        arrays["header_json"] = np.array(json.dumps(h))
        np.savez(path, **arrays)
        tally.attempt("dataset header", _quiet(lambda: Dataset.load(path)),
                      lambda got: isinstance(got.name, str) and got.num_features == 3
                      and all(isinstance(c, str) for c in got.class_names))

    run()


# --------------------------------------------------------------------------------- feature cache
def fuzz_feature_cache(tally: Tally, workdir: Path, n: int) -> None:
    cache = FeatureCache(workdir / "cache")
    feats = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    cache.put("k", feats, {"dataset": "x"})
    npz, meta = cache.paths("k")
    good_npz, good_meta = npz.read_bytes(), meta.read_bytes()

    @given(st.booleans(), mutated(good_npz), st.one_of(mutated(good_meta), json_values.map(lambda v: json.dumps(v).encode())))
    @_settings(n)
    def run(which: bool, npz_bytes: bytes, meta_bytes: bytes) -> None:
        npz.write_bytes(npz_bytes if which else good_npz)
        meta.write_bytes(good_meta if which else meta_bytes)

        def get() -> Any:
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                got = cache.get("k", shape=(10, 4))
            if got is None:  # a damaged entry is reported (a warning naming the file) and rebuilt
                if not any(issubclass(w.category, CorruptCacheWarning) for w in seen):
                    raise AssertionError("a cache entry was dropped without a warning")
                raise DataFileError("cache entry dropped with a warning")
            return got

        tally.attempt("feature cache", get, lambda got: got.shape == (10, 4) and np.array_equal(got, feats))

    run()
    assert CACHE_FORMAT == 1


# ------------------------------------------------------------------------------------------ CLI
_OPTIONS = {
    "run": ["--batch-size", "--cycles", "--initial-size", "--candidate-size", "--gamma", "--lambda-mf", "--epochs",
            "--seeds", "--seed", "--threads", "--out", "--strategy", "--dataset"],
    "label": ["--batch", "--max-labels", "--seed", "--gamma", "--retrain-every", "--epochs", "--candidate-size",
              "--window", "--dataset", "--state-dir", "--resume"],
    "plot": ["--metric", "--out"],
}
_NON_NEGATIVE = {"--cycles", "--candidate-size", "--lambda-mf", "--epochs", "--seed", "--max-labels", "--retrain-every"}
_POSITIVE = {"--batch-size", "--initial-size", "--gamma", "--seeds", "--threads", "--batch", "--window"}


@contextlib.contextmanager
def _cwd(path: Path) -> Any:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


class _Accepted(BaseException):
    """Raised in place of loading data: the arguments were accepted."""


def fuzz_cli(tally: Tally, workdir: Path, n: int) -> None:
    from contextlib import redirect_stderr, redirect_stdout

    from bayesal.cli import commands, label

    values = st.sampled_from(["-1", "0", "1", "2.5", "nan", "inf", "-5", "abc", "", "1e9", "3", str(workdir / "x.csv"),
                              str(workdir / "missing" / "r.parquet"), "../../../etc", "random"])

    @given(st.sampled_from(sorted(_OPTIONS)), st.lists(st.tuples(st.integers(0, 20), values), max_size=4))
    @_settings(n)
    def run(cmd: str, pairs: list[tuple[int, str]]) -> None:
        opts = _OPTIONS[cmd]
        argv = [cmd] + (["results.parquet"] if cmd == "plot" else [])
        bad_number = False
        for k, v in pairs:
            opt = opts[k % len(opts)]
            argv += [opt, v]
            try:
                num = float(v)
            except ValueError:
                num = None
            if opt in _NON_NEGATIVE | _POSITIVE and (num is None or num != num or abs(num) == float("inf")
                                                    or (opt in _POSITIVE and num <= 0) or num < 0):
                bad_number = True
            if (opt in (_NON_NEGATIVE | _POSITIVE) - {"--gamma", "--lambda-mf"} and num is not None
                    and (num != num or abs(num) == float("inf") or num != int(num) or "." in v or "e" in v)):
                bad_number = True

        def call() -> Any:
            err = io.StringIO()

            def accepted(*a: Any, **k: Any) -> Any:
                raise _Accepted()

            patches = [(commands, "_load", accepted), (label, "_open_session", accepted)]
            saved = [(m, a, getattr(m, a, None)) for m, a, _ in patches]
            for m, a, f in patches:
                setattr(m, a, f)
            try:
                with redirect_stdout(io.StringIO()), redirect_stderr(err), _cwd(workdir):
                    rc = commands.main(argv)
            except _Accepted:
                return "accepted"
            finally:
                for m, a, f in saved:
                    if f is None:
                        with contextlib.suppress(AttributeError):
                            delattr(m, a)
                    else:
                        setattr(m, a, f)
            text = err.getvalue()
            if "Traceback" in text or rc == 1:
                raise RuntimeError(f"CLI printed an internal error for {argv}: {text.strip()[-300:]}")
            if rc == 2:
                if len(text.strip().splitlines()) != 1:
                    raise RuntimeError(f"CLI error is not one line for {argv}: {text!r}")
                from bayesal.exceptions import InvalidInputError
                raise InvalidInputError(text.strip())  # a clear, one-line refusal
            return "ok"

        tally.attempt(f"cli {argv}", call, lambda r: not (r == "accepted" and bad_number))

    run()


READERS: dict[str, Callable[[Tally, Path, int], None]] = {
    "results_csv": fuzz_results_csv,
    "results_parquet": fuzz_results_parquet,
    "data_csv": fuzz_data_csv,
    "data_parquet": fuzz_data_parquet,
    "data_npz": fuzz_data_npz,
    "dataset_header": fuzz_dataset_header,
    "feature_cache": fuzz_feature_cache,
    "cli": fuzz_cli,
}


# --------------------------------------------------------------------------------- disk faults
def _write_paths(workdir: Path) -> dict[str, tuple[Callable[[int], Any], Callable[[], Any]]]:
    """Write paths as ``name -> (write(k), verify())``: ``write(k)`` performs the k-th write of a
    sequence; ``verify()`` returns how many rows/records written so far are missing (0 if none)."""
    from bayesal.experiments.results import append_results

    rng = np.random.default_rng(0)
    feats = rng.normal(size=(12, 3)).astype(np.float32)
    paths: dict[str, tuple[Callable[[int], Any], Callable[[], Any]]] = {}
    for suffix in (".csv", ".parquet"):
        out = workdir / f"disk{suffix}"
        done: list[int] = []

        def write(k: int, out: Path = out, done: list[int] = done) -> None:
            rows = [{"strategy": "s", "seed": k, "cycle": c, "accuracy": 0.5} for c in range(4)]
            append_results(rows, out)
            done.append(k)

        def verify(out: Path = out, done: list[int] = done) -> int:
            if not out.exists():
                return 4 * len(done)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                df = read_results(out)
            have = set(zip(df.seed, df.cycle)) if len(df) else set()
            return sum((k, c) not in have for k in done for c in range(4))

        paths[f"results{suffix}"] = (write, verify)

    ds_path = workdir / "disk_ds.npz"
    saved: list[int] = []

    def write_ds(k: int) -> None:
        from_arrays(feats * (k + 1), np.arange(12) % 2, name=f"v{k}", test_size=0).save(ds_path)
        saved.append(k)

    def verify_ds() -> int:
        if not saved:
            return 0
        got = Dataset.load(ds_path)  # the last successful save, intact
        return 0 if got.name == f"v{saved[-1]}" else 12

    paths["dataset.save"] = (write_ds, verify_ds)
    cache = FeatureCache(workdir / "disk_cache")
    stored: list[int] = []

    def write_cache(k: int) -> None:
        cache.put(f"k{k}", feats + k)
        stored.append(k)

    def verify_cache() -> int:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return sum(12 for k in stored if cache.get(f"k{k}") is None)

    paths["feature cache"] = (write_cache, verify_cache)

    from bayesal.labeling.session import Session
    from bayesal.laplace import HeadConfig, PosteriorOptions

    pool = (rng.normal(size=(400, 3)) + np.eye(3)[np.arange(400) % 3] * 2).astype(np.float32)
    state_dir = workdir / "disk_session"
    told: dict[int, int] = {}

    def open_session() -> Any:
        log = state_dir / "labels.jsonl"
        if log.exists() and b"\n" in log.read_bytes():  # a log without a complete line: never acknowledged
            return Session.resume(state_dir, pool, async_snapshot=False)
        return Session(pool, ["a", "b", "c"], state_dir=state_dir, random_state=0, candidate_size=None,
                       options=PosteriorOptions(head=HeadConfig(epochs=2)), async_snapshot=False)

    def write_session(k: int) -> None:
        s = open_session()
        try:
            i = int(s.available_indices()[0])
            s.tell(i, k % 3)  # acknowledged once it returns
            told[i] = k % 3
        finally:
            s.close()

    def verify_session() -> int:
        if not told:
            return 0
        s = open_session()
        try:
            return sum(1 for i, c in told.items() if s.labels.get(i) != c)
        finally:
            s.close()

    paths["labeling session"] = (write_session, verify_session)
    return paths


def _count_lost(tally: Tally, name: str, lost: int) -> None:
    if name == "labeling session":
        tally.lost_labels += lost
    else:
        tally.lost_result_rows += lost


def faults_disk(tally: Tally, workdir: Path, n: int) -> None:
    """A full disk at the N-th ``os.write`` (whole or short writes) and a read-only directory, for
    every write path: a StorageError, the files as before the failed write, and the next write
    succeeding once space is back. ``n`` bounds the number of injected faults."""
    from faultkit import disk_full_after, read_only

    budget = n
    k = 0
    rounds = 0
    while budget > 0:
        root = workdir / f"round{rounds}"
        rounds += 1
        root.mkdir(parents=True, exist_ok=True)
        for name, (write, verify) in _write_paths(root).items():
            for fail_at in range(0, 6):
                for partial in (False, True):
                    if budget <= 0:
                        break
                    budget -= 1
                    k += 1
                    with disk_full_after(fail_at, partial=partial):
                        tally.attempt(f"disk full: {name} at write {fail_at}", lambda w=write, k=k: w(k))
                    write(k + 100000)  # space is back: the next write works
                    _count_lost(tally, name, verify())
            if budget > 0:
                budget -= 1
                with read_only(root):
                    outcome = tally.attempt(f"read-only: {name}", lambda w=write, k=k: w(k + 200000))
                if outcome == "correct":  # a write "succeeded" on a read-only directory: impossible
                    tally.silent_drops += 1
                    tally.note("silent_drop", f"read-only: {name} reported success")
                _count_lost(tally, name, verify())


# ------------------------------------------------------------------------------ session files
def _session_template(workdir: Path) -> tuple[Path, np.ndarray, dict[int, int]]:
    """A small closed session (tells and a skip) to mutate; returns its directory, pool and labels."""
    from bayesal.labeling.session import Session
    from bayesal.laplace import HeadConfig, PosteriorOptions

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(30, 3)) + np.eye(3)[np.arange(30) % 3] * 2).astype(np.float32)
    path = workdir / "template"
    s = Session(x, ["a", "b", "c"], state_dir=path, random_state=0, options=PosteriorOptions(head=HeadConfig(epochs=2)),
                candidate_size=None, fsync=False, async_snapshot=False)
    for k, i in enumerate([0, 1, 2, 5, 7, 9]):
        s.tell(i, k % 3)
    s.skip(4)
    labels = dict(s.labels)
    s.close()
    return path, x, labels


def _fresh_copy(template: Path, target: Path) -> Path:
    import shutil

    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(template, target)
    return target


def _resume_check(x: np.ndarray, state_dir: Path, truth: dict[int, int] | None) -> Callable[[], Any]:
    """Resume (and, when resuming refuses, recover) ``state_dir``; returns the labels."""
    from bayesal.labeling.session import Session

    def run() -> Any:
        from bayesal.exceptions import CorruptStateError

        try:
            s = Session.resume(state_dir, x, fsync=False, async_snapshot=False)
        except CorruptStateError:  # what the user is told to do next
            s = Session.recover(state_dir, x, fsync=False, async_snapshot=False)
        try:
            labels = dict(s.labels)
            names = s.class_names
        finally:
            s.close()
        return labels, len(names)
    return run


def _labels_ok(truth: dict[int, int] | None, n: int) -> Callable[[Any], bool]:
    def check(got: Any) -> bool:
        labels, c = got
        if truth is not None:  # damaged bytes: what loads is a prefix of what was saved
            return all(truth.get(i) == v for i, v in labels.items())
        return all(0 <= i < n and 0 <= v < c for i, v in labels.items())  # a crafted, valid-looking file
    return check


def fuzz_session_log(tally: Tally, workdir: Path, n: int) -> None:
    from bayesal.labeling.storage import LOG_NAME, STATE_NAME, encode_record, read_log

    template, x, truth = _session_template(workdir)
    log_bytes = (template / LOG_NAME).read_bytes()
    records = read_log(template / LOG_NAME).records
    target = workdir / "case"

    @given(st.sampled_from(["bytes", "record", "fifo"]), mutated(log_bytes), st.integers(0, len(records) - 1),
           st.text(max_size=10), json_values, st.integers(0, 2), st.booleans())
    @_settings(n)
    def run(kind: str, data: bytes, line: int, key: str, value: Any, deep: int, drop_state: bool) -> None:
        d = _fresh_copy(template, target)
        if drop_state:  # the log is then the only source
            (d / STATE_NAME).unlink()
        if kind == "fifo":
            (d / LOG_NAME).unlink()
            os.mkfifo(d / LOG_NAME)
            tally.attempt("session log: FIFO", _resume_check(x, d, truth), _labels_ok(truth, len(x)), timeout=60)
            return
        if kind == "bytes":
            (d / LOG_NAME).write_bytes(data)
        else:  # a valid checksum around content that is not ours
            recs = [dict(r) for r in records]
            for _ in range(deep * 500):
                value = [value]
            if key in recs[line] and deep == 0 and len(key) % 2:
                del recs[line][key]
            else:
                recs[line][key or "label"] = value
            try:
                (d / LOG_NAME).write_bytes(b"".join(encode_record(r) for r in recs))
            except (ValueError, RecursionError):
                (d / LOG_NAME).write_bytes(b"".join(encode_record(r) for r in records[:line]))
        tally.attempt(f"session log: {kind}", _resume_check(x, d, truth),
                      _labels_ok(truth if kind == "bytes" else None, len(x)), timeout=60)

    run()


def fuzz_session_snapshot(tally: Tally, workdir: Path, n: int) -> None:
    import hashlib

    import torch

    from bayesal.labeling.storage import LOG_NAME, SNAPSHOT_MAGIC, STATE_NAME, load_snapshot

    template, x, truth = _session_template(workdir)
    snap_bytes = (template / STATE_NAME).read_bytes()
    snap = load_snapshot(template / STATE_NAME)
    target = workdir / "case"

    def write_snapshot(path: Path, state: Any) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        payload = buf.getvalue()
        path.write_bytes(SNAPSHOT_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)

    @given(st.sampled_from(["bytes", "payload", "fifo"]), mutated(snap_bytes),
           st.sampled_from(sorted(snap) + ["extra"]), st.sampled_from(["header", "posterior", "events", "top"]),
           json_values, st.booleans())
    @_settings(n)
    def run(kind: str, data: bytes, key: str, part: str, value: Any, drop_log: bool) -> None:
        d = _fresh_copy(template, target)
        if drop_log:  # the snapshot is then the only source
            (d / LOG_NAME).unlink()
        if kind == "fifo":
            (d / STATE_NAME).unlink()
            os.mkfifo(d / STATE_NAME)
        elif kind == "bytes":
            (d / STATE_NAME).write_bytes(data)
        else:
            state = {k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v) for k, v in snap.items()}
            if part == "top":
                state[key] = value
            elif part == "header":
                state["header"] = {**state["header"], key: value}
            elif part == "posterior":
                post = dict(state["posterior"])
                post[key if key in post else "covariance"] = (
                    torch.full_like(post["covariance"], float("nan")) if isinstance(value, float) else value)
                state["posterior"] = post
            else:
                events = list(state["events"])
                if events:
                    events[len(events) // 2] = {**events[len(events) // 2], key: value}
                state["events"] = events
            write_snapshot(d / STATE_NAME, state)
        tally.attempt(f"session snapshot: {kind}/{part}", _resume_check(x, d, truth),
                      _labels_ok(truth if kind == "bytes" else None, len(x)), timeout=60)

    run()


READERS["session_log"] = fuzz_session_log
READERS["session_snapshot"] = fuzz_session_snapshot


def fuzz_pool_npy(tally: Tally, workdir: Path, n: int) -> None:
    """A memory-mapped ``.npy`` pool: opened, read in chunks and by random rows."""
    from bayesal.data import open_pool

    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32))
    original = buf.getvalue()
    path = workdir / "pool.npy"

    @given(mutated(original))
    @_settings(n)
    def run(data: bytes) -> None:
        path.write_bytes(data)

        def read() -> Any:
            pool = open_pool(path)
            blocks = [blk for _, blk in pool.chunks(16)]
            rows = sum(len(b) for b in blocks)
            if rows:
                pool.take([0, rows - 1])
            return rows, blocks

        tally.attempt("pool npy", read, lambda got: data != original or got[0] == 50)

    run()


READERS["pool_npy"] = fuzz_pool_npy

"""Fault families of the services and stores beyond the file readers of :mod:`families`: the Label Studio
backend's endpoints and serve's API under hypothesis-generated JSON (non-finite numbers, deep nesting,
huge integers, lone surrogates), pool files and shard folders (hostile manifests, missing, extra and
truncated shards, FIFOs, damaged Zarr chunks), session headers with valid checksums, foreign files
given as results files, a full disk under serve and the backend, and update batch sizes.

Each family is ``family(tally, workdir, n)`` like those of :mod:`families`. An HTTP answer counts as a
clear error when it is a 4xx, or a 503 with a JSON message; a 500, a non-JSON error or a traceback
counts as another exception.
"""

from __future__ import annotations

import copy
import errno
import hashlib
import json
import os
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from families import _fresh_copy, _quiet, _results_frame, _resume_check, _session_template, _settings, mutated
from faultkit import Tally
from hypothesis import given
from hypothesis import strategies as st

from bayesal.exceptions import BayesalError
from bayesal.experiments.results import append_results

ROOT = Path(__file__).resolve().parents[2]
LS_FIXTURES = ROOT / "tests" / "labelstudio" / "fixtures"


class Refused(BayesalError):
    """An HTTP answer that refused the request clearly (a 4xx, or a 503 naming the problem)."""


def _answer(r: Any, key: str) -> Any:
    """``r`` as a tally outcome: the JSON body of a 2xx, :class:`Refused` for a clear refusal, else
    ``RuntimeError`` (a 500, or an error body that is not a JSON message)."""
    if r.status_code < 300:
        return r.json() if r.headers.get("content-type", "").startswith("application/json") else r.content
    try:
        message = r.json().get(key)
    except (ValueError, AttributeError):
        message = None
    if isinstance(message, str) and message and "Traceback" not in message and (
            400 <= r.status_code < 500 or r.status_code == 503):
        raise Refused(message)
    raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")


# ------------------------------------------------------------------------------------ hostile JSON
_SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(-(2**70), 2**70), st.sampled_from([10**300, -(10**300), 2**63, -1, 0]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20), st.sampled_from(["\ud800", "x\udfff", "a\x00b", "/data/local-files/?d=a.png%00",
                                            "ANNOTATION_CREATED", "TASKS_DELETED", "1", "1.2", "١"]),
)
JSON_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)), max_leaves=12)


class Deep:
    """A list nested ``levels`` deep, built only when the input is used (``expand``): hypothesis prints
    the inputs it draws, and printing the nesting itself would overflow its recursion."""

    def __init__(self, levels: int) -> None:
        self.levels = levels

    def __repr__(self) -> str:
        return f"Deep({self.levels})"

    def build(self) -> Any:
        value: Any = 1
        for _ in range(self.levels):
            value = [value]
        return value


def expand(obj: Any) -> Any:
    """``obj`` with each :class:`Deep` placeholder replaced by its nesting."""
    if isinstance(obj, Deep):
        return obj.build()
    if isinstance(obj, dict):
        return {k: expand(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [expand(v) for v in obj]
    return obj


@st.composite
def edited(draw: Any, body: Any) -> Any:
    """``body`` with one value replaced by generated JSON (or a deeply nested one), or a key removed."""
    out = copy.deepcopy(body)
    paths: list[tuple[Any, Any]] = []
    stack = [out]
    while stack:
        node = stack.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
        for k, v in items:
            paths.append((node, k))
            stack.append(v)
    if not paths:
        return draw(JSON_VALUES)
    node, key = draw(st.sampled_from(paths))
    kind = draw(st.sampled_from(["value", "value", "deep", "drop"]))
    if kind == "drop" and isinstance(node, dict):
        del node[key]
    else:
        node[key] = Deep(draw(st.integers(50, 3000))) if kind == "deep" else draw(JSON_VALUES)
    return out


def _dumps(body: Any) -> bytes:
    # NaN/Infinity as the literals Python's json writes; lone surrogates as \\ud800 escapes
    try:
        return json.dumps(expand(body), allow_nan=True).encode()
    except (ValueError, RecursionError):
        return b"[" * 5000


class _HashBackbone:
    name, dim = "hash", 8

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim}

    def encode(self, items: Any, batch_size: int = 64, progress: bool = True) -> np.ndarray:
        keys = [str(t) if isinstance(t, str) else str(np.asarray(t).shape) for t in items]
        return np.array([np.frombuffer(hashlib.sha256(k.encode("utf-8", "surrogatepass")).digest()[: self.dim],
                                       dtype=np.uint8) for k in keys], dtype=np.float32) / 255.0


def _ls_client(workdir: Path) -> tuple[Any, Any, Path]:
    from fastapi.testclient import TestClient

    from bayesal.labelstudio import BackendSettings, LabelStudioBackend, create_app

    files = workdir / "files"
    files.mkdir(parents=True, exist_ok=True)
    backend = LabelStudioBackend(workdir / "state", BackendSettings(seed=0, fsync=False, files_root=str(files)),
                                 backbones={"text": _HashBackbone(), "image": _HashBackbone()})
    client = TestClient(create_app(backend), raise_server_exceptions=False)
    client.__enter__()
    return client, backend, files


def fuzz_labelstudio(tally: Tally, workdir: Path, n: int) -> None:
    """Recorded Label Studio bodies with one value replaced by hostile JSON, at every endpoint."""
    bodies = {p.stem: json.loads(p.read_text())["body"] for p in sorted(LS_FIXTURES.glob("*_post.json"))
              if p.stem.startswith("text_")}
    hooks = {p.stem: json.loads(p.read_text())["body"] for p in sorted(LS_FIXTURES.glob("text_webhook_*.json"))}
    routes = [("/setup", bodies["text_setup_post"]), ("/predict", bodies["text_predict_post"]),
              ("/train", {"annotations": [dict(hooks["text_webhook_annotation_created"]["task"],
                                               annotations=[hooks["text_webhook_annotation_created"]["annotation"]])],
                          "project": bodies["text_predict_post"]["project"]})]
    routes += [("/webhook", body) for body in hooks.values()]
    client, backend, _ = _ls_client(workdir)
    assert client.post("/setup", json=bodies["text_setup_post"]).status_code == 200
    try:
        @given(st.sampled_from(routes).flatmap(lambda rb: st.tuples(st.just(rb[0]), edited(rb[1]))))
        @_settings(n)
        def run(case: tuple[str, Any]) -> None:
            route, body = case
            data = _dumps(body)
            tally.attempt(f"labelstudio {route} {data[:120]!r}", _quiet(lambda: _answer(
                client.post(route, content=data, headers={"Content-Type": "application/json"}), "error")), timeout=30)

        run()
        for raw in (b"{", b"[]", b"null", b"NaN", b'{"project": ' + b"9" * 5000 + b"}", b"\xff\xfe"):
            for route in ("/setup", "/predict", "/webhook", "/train"):
                tally.attempt(f"labelstudio {route} raw", _quiet(lambda route=route, raw=raw: _answer(
                    client.post(route, content=raw, headers={"Content-Type": "application/json"}), "error")))
    finally:
        client.__exit__(None, None, None)
        backend.close()


def faults_labelstudio_disk(tally: Tally, workdir: Path, n: int) -> None:
    """Webhooks while every write fails (a full disk), then once space is free: refused clearly, then
    applied; nothing annotated while the disk was full is counted as applied."""
    from faultkit import disk_full_after

    hook = json.loads((LS_FIXTURES / "text_webhook_annotation_created.json").read_text())["body"]
    setup = json.loads((LS_FIXTURES / "text_setup_post.json").read_text())["body"]
    client, backend, _ = _ls_client(workdir)
    try:
        client.post("/setup", json=setup)
        for k in range(max(1, n // 20)):
            body = copy.deepcopy(hook)
            body["annotation"]["id"] = 1000 + k
            with disk_full_after(k % 3):
                tally.attempt("labelstudio webhook, disk full", _quiet(lambda b=body: _answer(
                    client.post("/webhook", json=b), "error")))
            tally.attempt("labelstudio webhook, space again", _quiet(lambda b=body: _answer(
                client.post("/webhook", json=b), "error")), lambda got: isinstance(got, dict) and got.get("status") == "ok")
    finally:
        client.__exit__(None, None, None)
        backend.close()


# ------------------------------------------------------------------------------------ serve
def _serve(workdir: Path) -> tuple[Any, Any, Any]:
    from fastapi.testclient import TestClient

    from bayesal.labeling.session import Session
    from bayesal.laplace import HeadConfig, PosteriorOptions
    from bayesal.serve import LabelingService, create_app

    rng = np.random.default_rng(0)
    x = (rng.normal(size=(80, 4)) + np.eye(4)[np.arange(80) % 4] * 2).astype(np.float32)
    session = Session(x, ["a", "b", "c", "d"], items=[f"item {i}" for i in range(80)], random_state=0,
                      options=PosteriorOptions(head=HeadConfig(epochs=2)), candidate_size=None,
                      state_dir=workdir / "session", fsync=False)
    service = LabelingService(session)
    client = TestClient(create_app(service), base_url="http://127.0.0.1:8765", raise_server_exceptions=False,
                        headers={"X-Bayesal-Token": "-", "X-Bayesal-Client": "tabA"})
    return client, service, x


_SERVE_POSTS = ["/api/answer", "/api/skip", "/api/correct", "/api/undo", "/api/redo", "/api/retrain"]
_SERVE_GETS = ["/api/next", "/api/info", "/api/panel", "/api/export/labels.csv", "/api/export/labels.jsonl",
               "/api/export/posterior.pt"]
_SERVE_BODY = st.one_of(
    JSON_VALUES,
    st.fixed_dictionaries({"index": st.one_of(st.integers(-5, 90), JSON_VALUES), "label": st.one_of(
        st.sampled_from(["a", "b", "c", "d", "e"]), JSON_VALUES)}),
    st.fixed_dictionaries({"expect_index": st.one_of(st.none(), st.integers(-5, 90), JSON_VALUES)}),
)


def fuzz_serve(tally: Tally, workdir: Path, n: int) -> None:
    """Every route of serve's API with generated bodies and client ids; then every acknowledged answer
    must be in the session reopened from disk."""
    from bayesal.labeling.session import Session

    client, service, x = _serve(workdir)
    try:
        @given(st.sampled_from(_SERVE_POSTS + _SERVE_GETS), _SERVE_BODY,
               st.sampled_from(["tabA", "tabB", "", "bad id!", "x" * 80]))
        @_settings(n)
        def run(route: str, body: Any, tab: str) -> None:
            headers = {"X-Bayesal-Client": tab}
            if route in _SERVE_GETS:
                call = lambda: _answer(client.get(route, headers=headers), "detail")  # noqa: E731
            else:
                data = _dumps(body)
                call = lambda: _answer(client.post(route, content=data, headers=dict(  # noqa: E731
                    headers, **{"Content-Type": "application/json"})), "detail")
            tally.attempt(f"serve {route} {tab!r}", _quiet(call), timeout=30)

        run()
        labels = dict(service.session.labels)
    finally:
        service.close()
    s = Session.resume(workdir / "session", x, fsync=False)
    try:
        lost = sum(1 for i, c in labels.items() if s.labels.get(i) != c)
    finally:
        s.close()
    tally.lost_labels += lost
    if lost:
        tally.note("lost_label", f"serve: {lost} acknowledged labels not on disk")


def faults_serve_disk(tally: Tally, workdir: Path, n: int) -> None:
    """Answers while the disk is full, then after space is freed, on one running server: refused, then
    recorded; every acknowledged answer survives a reopen."""
    from faultkit import disk_full_after

    from bayesal.labeling.session import Session

    client, service, x = _serve(workdir)
    acknowledged: dict[int, int] = {}
    try:
        for k in range(max(1, n // 20)):
            card = client.get("/api/next").json()
            if card.get("done"):
                break
            i, label = card["index"], "abcd"[k % 4]
            body = {"index": i, "label": label}
            with disk_full_after(0):
                tally.attempt("serve answer, disk full", _quiet(lambda b=body: _answer(client.post(
                    "/api/answer", json=b), "detail")))
            got = tally.attempt("serve answer, space again", _quiet(lambda b=body: _answer(client.post(
                "/api/answer", json=b), "detail")), lambda got: isinstance(got, dict))
            if got == "correct":
                acknowledged[i] = "abcd".index(label)
    finally:
        service.close()
    s = Session.resume(workdir / "session", x, fsync=False)
    try:
        lost = sum(1 for i, c in acknowledged.items() if s.labels.get(i) != c)
    finally:
        s.close()
    tally.lost_labels += lost


# ------------------------------------------------------------------------------------ pools
def fuzz_pool_folders(tally: Tally, workdir: Path, n: int) -> None:
    """Shard folders (written by featurize_to_shards, with a manifest) damaged one way each: a hostile
    manifest, a missing, extra or truncated shard, a FIFO shard; a pool must hold all 60 rows exactly or
    be refused."""
    import shutil

    from bayesal.data import open_pool
    from bayesal.data.backbones import RawBackbone
    from bayesal.data.shards import MANIFEST_NAME, featurize_to_shards

    rng = np.random.default_rng(0)
    items = rng.normal(size=(60, 5)).astype(np.float32)
    template = workdir / "template"
    featurize_to_shards(RawBackbone(), items, template, shard_rows=16, progress=False)
    expected = open_pool(template).to_numpy()
    manifest = (template / MANIFEST_NAME).read_bytes()
    shards = sorted(p.name for p in template.glob("*.npy"))
    target = workdir / "pool"

    @given(st.sampled_from(["manifest", "json", "missing", "extra", "truncate", "fifo", "shard bytes"]),
           mutated(manifest), st.integers(0, len(shards) - 1), JSON_VALUES, st.integers(0, 4000))
    @_settings(n)
    def run(kind: str, bad_manifest: bytes, k: int, value: Any, cut: int) -> None:
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(template, target)
        shard = target / shards[k]
        if kind == "manifest":
            (target / MANIFEST_NAME).write_bytes(bad_manifest)
        elif kind == "json":
            doc = json.loads(manifest)
            key = sorted(doc)[k % len(doc)] if isinstance(doc, dict) and doc else None
            if key is not None:
                doc[key] = value
            (target / MANIFEST_NAME).write_bytes(_dumps(doc))
        elif kind == "missing":
            shard.unlink()
        elif kind == "extra":
            np.save(target / "zz-stray.npy", np.zeros((3, 5), dtype=np.float32))
        elif kind == "truncate":
            shard.write_bytes(shard.read_bytes()[: cut % max(1, shard.stat().st_size)])
        elif kind == "fifo":
            shard.unlink()
            os.mkfifo(shard)
        else:
            shard.write_bytes(shard.read_bytes()[:128] + os.urandom(cut % 64 + 1) + shard.read_bytes()[128 + cut % 64 + 1:])

        def read() -> Any:
            return open_pool(target).to_numpy()

        # a shard whose data bytes were overwritten in place cannot be told from the original (no checksum);
        # otherwise what opens must be exactly the 60 rows written
        tally.attempt(f"pool folder {kind}", _quiet(read), lambda got: kind == "shard bytes" or (
            got.shape == expected.shape and np.array_equal(got, expected)), timeout=30)

    run()


def fuzz_pool_zarr(tally: Tally, workdir: Path, n: int) -> None:
    """A Zarr pool with one chunk file replaced by mutated bytes: read in full, or a DataFileError."""
    try:
        import zarr
    except ImportError:
        return
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 4)).astype(np.float32)
    path = workdir / "pool.zarr"
    z = zarr.open_array(str(path), mode="w", shape=x.shape, chunks=(10, 4), dtype="float32")
    z[:] = x
    chunks = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
                    and not p.name.endswith(".json"))
    originals = {p: p.read_bytes() for p in chunks}

    @given(st.integers(0, len(chunks) - 1), st.data())
    @_settings(n)
    def run(k: int, data: Any) -> None:
        from bayesal.data import open_pool

        for p, raw in originals.items():
            p.write_bytes(raw)
        chunk = chunks[k]
        bad = data.draw(mutated(originals[chunk]))
        chunk.write_bytes(bad)
        tally.attempt("pool zarr chunk", _quiet(lambda: open_pool(path).to_numpy()),
                      lambda got: got.shape == x.shape, timeout=30)

    run()
    for p, raw in originals.items():
        p.write_bytes(raw)
    fifo = chunks[0]
    fifo.unlink()
    os.mkfifo(fifo)
    from bayesal.data import open_pool

    tally.attempt("pool zarr FIFO chunk", _quiet(lambda: open_pool(path).to_numpy()), timeout=30)


# ------------------------------------------------------------------------------------ session headers
def fuzz_session_headers(tally: Tally, workdir: Path, n: int) -> None:
    """The header line of a session log with one value replaced by generated JSON, its checksum kept
    valid (a hand edit): resume/recover gives the saved labels or a clear error."""
    from bayesal.labeling.storage import LOG_NAME, STATE_NAME, encode_record, read_log

    template, x, truth = _session_template(workdir)
    records = read_log(template / LOG_NAME).records
    target = workdir / "session"

    @given(edited(records[0]), st.booleans())
    @_settings(n)
    def run(header: Any, drop_state: bool) -> None:
        _fresh_copy(template, target)
        # written as a hand edit could: NaN literals and any nesting, with a valid checksum
        try:
            body = json.dumps(expand(header), separators=(",", ":"), sort_keys=True, allow_nan=True).encode()
        except (ValueError, RecursionError):
            body = b"[" * 5000 + b"]" * 5000
        line = b"%08x %s\n" % (zlib.crc32(body) & 0xFFFFFFFF, body)
        (target / LOG_NAME).write_bytes(line + b"".join(encode_record(r) for r in records[1:]))
        if drop_state:
            (target / STATE_NAME).unlink()
        # an edited header is another session: what loads must be the saved labels (or a clear error)
        tally.attempt("session header", _quiet(_resume_check(x, target, truth)),
                      lambda got: all(truth.get(i) == v for i, v in got[0].items()), timeout=60)

    run()


# ------------------------------------------------------------------------------------ results files
def _foreign_files(draw: Any) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["bytes", "text", "no newline", "parquet", "user csv", "json", "empty lines"]))
    if kind == "bytes":
        return ".csv", draw(st.binary(min_size=1, max_size=300))
    if kind == "text":
        return ".csv", draw(st.text(min_size=1, max_size=200)).encode("utf-8", "surrogatepass")
    if kind == "no newline":
        return ".csv", draw(st.text(min_size=1, max_size=40).filter(lambda t: "\n" not in t and "\r" not in t)).encode(
            "utf-8", "surrogatepass")
    if kind == "parquet":
        import io

        buf = io.BytesIO()
        pd.DataFrame({"a": [1, 2]}).to_parquet(buf)
        return draw(st.sampled_from([".csv", ".parquet"])), buf.getvalue()
    if kind == "user csv":
        cols = draw(st.lists(st.sampled_from(["id", "text", "label", "strategy", "seed", "x"]), min_size=1, max_size=4,
                             unique=True))
        return ".csv", (",".join(cols) + "\n" + ",".join("1" for _ in cols) + "\n").encode()
    if kind == "json":
        return draw(st.sampled_from([".csv", ".parquet"])), b'{"not": "results"}\n'
    return ".csv", b"\n\n\n"


def fuzz_results_foreign(tally: Tally, workdir: Path, n: int) -> None:
    """A file that is not a results file given as the results file to append to: refused, byte for byte
    untouched (a file the writer changed is counted as a lost result row: a user's data destroyed)."""
    rows = _results_frame(1).to_dict("records")

    @given(st.composite(_foreign_files)())
    @_settings(n)
    def run(case: tuple[str, bytes]) -> None:
        suffix, data = case
        path = workdir / f"user{suffix}"
        path.write_bytes(data)
        outcome = tally.attempt(f"results append to foreign {suffix} {data[:40]!r}",
                                _quiet(lambda: append_results(rows, path)))
        after = path.read_bytes() if path.exists() else b""
        if outcome == "correct":  # accepted: only a file that already was a results file (e.g. empty header)
            ok = after.startswith(data) or data.strip() == b""
        else:
            ok = after == data
        if not ok:
            tally.lost_result_rows += 1
            tally.note("foreign_file_modified", f"{suffix} {data[:60]!r}")
        path.unlink(missing_ok=True)

    run()


# ------------------------------------------------------------------------------------ update batches
def faults_update_batches(tally: Tally, workdir: Path, n: int) -> None:
    """One update with batches of 1 row to 100,000 rows (hard, soft, one-class labels): finite results
    in about a retrain's time (an update past 120 s is a hang)."""
    from bayesal import LastLayerLaplace

    g = torch.Generator().manual_seed(0)
    d, c = 64, 5
    w = torch.randn(c, d, generator=g, dtype=torch.float64)
    base_x = torch.randn(200, d, generator=g, dtype=torch.float64)
    post = LastLayerLaplace(prior_precision=1.0).fit(base_x, (base_x @ w.T).argmax(1))
    sizes = [1, 2, d - 1, d, d + 1, 500, 4_000, 10_000, 100_000]
    for k in range(max(len(sizes), n // 50)):
        m = sizes[k % len(sizes)]
        x = torch.randn(m, d, generator=g, dtype=torch.float64)
        kind = ("hard", "soft", "one class")[k // len(sizes) % 3]
        if kind == "hard":
            y: torch.Tensor = (x @ w.T).argmax(1)
        elif kind == "soft":
            y = torch.softmax(x @ w.T, 1)
        else:
            y = torch.zeros(m, dtype=torch.long)

        def update(x: torch.Tensor = x, y: torch.Tensor = y) -> Any:
            t0 = time.perf_counter()
            new = post.update(x, y)
            return new, time.perf_counter() - t0

        tally.attempt(f"update M={m} {kind}", update, lambda got: bool(torch.isfinite(got[0].mean).all())
                      and bool(torch.isfinite(got[0].covariance).all()), timeout=120)


# ------------------------------------------------------------------------------------ disk: results
def faults_results_disk(tally: Tally, workdir: Path, n: int) -> None:
    """Appends to a CSV results file while the disk fills at the k-th write: the rows appended before
    stay readable, and nothing but whole runs is ever read back."""
    from faultkit import disk_full_after

    from bayesal.experiments.results import read_results

    path = workdir / "results.csv"
    kept = 0
    for k in range(max(1, n // 20)):
        rows = _results_frame(1).assign(seed=k).to_dict("records")
        with disk_full_after(k % 4, code=errno.ENOSPC, partial=bool(k % 2)):
            if tally.attempt("results append, disk full", _quiet(lambda r=rows: append_results(r, path))) == "correct":
                kept += len(rows)
        got = len(read_results(path)) if path.exists() else 0
        if got < kept:
            tally.lost_result_rows += kept - got
        kept = got


SURFACES: dict[str, Callable[[Tally, Path, int], None]] = {
    "labelstudio_json": fuzz_labelstudio,
    "labelstudio_disk": faults_labelstudio_disk,
    "serve_api": fuzz_serve,
    "serve_disk": faults_serve_disk,
    "pool_folders": fuzz_pool_folders,
    "pool_zarr": fuzz_pool_zarr,
    "session_headers": fuzz_session_headers,
    "results_foreign": fuzz_results_foreign,
    "results_disk": faults_results_disk,
    "update_batches": faults_update_batches,
}

"""The real server process over HTTP: every acknowledged answer survives a SIGKILL; resume continues."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from bayesal.data import load_dataset  # noqa: E402
from bayesal.labeling.session import Session  # noqa: E402

pytestmark = pytest.mark.slow


def test_sigkill_loses_no_acknowledged_answer(serve_process, tmp_path):
    state = tmp_path / "proj"
    ds = load_dataset("digits")
    srv = serve_process(["--dataset", "digits", "--state-dir", str(state)])
    h = {**srv.headers(), "X-Bayesal-Client": "script"}
    card = httpx.get(srv.url + "api/next", headers=h).json()
    acked = {}
    for _ in range(12):
        i = card["index"]
        r = httpx.post(srv.url + "api/answer", json={"index": i, "label": str(ds.train_labels[i])}, headers=h)
        assert r.status_code == 200
        acked[i] = int(ds.train_labels[i])
        card = r.json()["next"]
    srv.kill()  # no chance to flush anything
    again = serve_process(["--resume", str(state)])
    stats = httpx.get(again.url + "api/panel", headers=h).json()["stats"]
    assert stats["n_labeled"] == 12
    nxt = httpx.get(again.url + "api/next", headers=h).json()
    assert nxt["index"] not in acked and nxt["n_labeled"] == 12
    again.stop()
    s = Session.resume(state, ds.train_features)
    try:
        assert s.labels == acked
    finally:
        s.close()
    assert "bayesal serve: saved" not in srv.output()  # the killed server never shut down
    assert "resumed session" in again.output() and "bayesal serve: saved 12 labels" in again.output()
    assert np.isfinite(stats["expected_accuracy"])


def test_token_server_refuses_wrong_tokens(serve_process, tmp_path):
    srv = serve_process(["--dataset", "digits", "--state-dir", str(tmp_path / "p")], token="s3cret-token-for-test")
    assert httpx.get(srv.url + "api/info", headers={"X-Bayesal-Token": "wrong"}).status_code == 401
    assert httpx.get(srv.url).status_code == 401
    assert httpx.get(srv.page).status_code == 200
    assert httpx.get(srv.url + "api/info", headers=srv.headers()).status_code == 200

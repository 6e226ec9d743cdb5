"""The web app's JSON API, its security checks and the labeling service's multi-client rules."""

from __future__ import annotations

import io
import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from bayesal.exceptions import InvalidInputError, StaleAnswerError  # noqa: E402
from bayesal.labeling.session import Session  # noqa: E402
from bayesal.laplace import HeadConfig, PosteriorOptions  # noqa: E402
from bayesal.laplace.posterior import LastLayerLaplace  # noqa: E402
from bayesal.serve import LabelingService, create_app  # noqa: E402
from bayesal.serve.app import TOKEN_HEADER, check_bind, is_loopback  # noqa: E402
from bayesal.serve.service import shortcut_keys  # noqa: E402

NAMES = ["business", "sport", "tech"]
LOCAL = "http://127.0.0.1:8765"


@pytest.fixture(scope="module")
def pool(clustered_pool):
    x, y, centers, rng = clustered_pool()
    c, d = centers.shape
    texts = [f"document {i} about {NAMES[k]}" for i, k in enumerate(y)]
    tx = (centers[np.arange(60) % c] + rng.normal(size=(60, d))).astype(np.float32)
    return x, y, texts, tx, np.arange(60) % c


def make_service(pool, tmp_path: Path, **kw) -> LabelingService:
    x, _, texts, tx, ty = pool
    session = Session(x, NAMES, items=texts, random_state=1, options=PosteriorOptions(head=HeadConfig(epochs=10)), candidate_size=100,
                      state_dir=tmp_path / "s", fsync=False)
    return LabelingService(session, name="toy", test_features=tx, test_labels=ty, **kw)


@pytest.fixture
def service(pool, tmp_path):
    svc = make_service(pool, tmp_path)
    yield svc
    svc.close()


def client_for(svc: LabelingService, token: str | None = None, client_id: str = "tab1", **headers) -> TestClient:
    h = {TOKEN_HEADER: token or "-", "X-Bayesal-Client": client_id, **headers}
    return TestClient(create_app(svc, token=token), base_url=LOCAL, headers=h)


def saved_labels(tmp_path: Path, pool) -> dict[int, int]:
    """Labels read back from the session directory by a fresh session (what survived on disk)."""
    s = Session.resume(tmp_path / "s", pool[0], fsync=False)
    try:
        return s.labels
    finally:
        s.close()


def test_page_is_self_contained_and_locked_down(service):
    c = client_for(service)
    r = c.get("/")
    assert r.status_code == 200
    assert "<script nonce=" in r.text and "bayesalTimings" in r.text
    # everything is inline: no script, stylesheet or image is fetched from anywhere
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", r.text)
    csp = r.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "unsafe-inline" not in csp
    assert r.headers["cache-control"] == "no-store"


def test_answer_is_logged_and_returns_the_next_item(service, pool, tmp_path):
    c = client_for(service)
    card = c.get("/api/next").json()
    assert card["item"] == {"kind": "text", "text": pool[2][card["index"]]}
    assert len(card["top"]) == 3 and abs(sum(t["p"] for t in card["top"]) - 1) < 0.05
    # no labels: the prediction is uniform, so the page is told there is no guess and nothing to highlight
    assert card["guess"] == [] and card["no_guess"] == "no labels yet"
    assert all(abs(t["p"] - 1 / 3) < 1e-3 for t in card["top"])
    assert c.get("/api/next").json()["index"] == card["index"]  # the same item until it is answered
    r = c.post("/api/answer", json={"index": card["index"], "label": "sport"})
    assert r.status_code == 200
    body = r.json()
    assert body["recorded"] == {"op": "tell", "index": card["index"], "label": "sport"}
    assert body["next"]["index"] != card["index"] and body["next"]["n_labeled"] == 1
    # one label: the prediction is no longer uniform, and the guess is the most probable class
    nxt = body["next"]
    assert nxt["no_guess"] is None and nxt["guess"][0] == nxt["top"][0]["label"]
    assert nxt["top"][0]["p"] > nxt["top"][-1]["p"] + 0.005
    assert all(t["label"] in nxt["guess"] for t in nxt["top"] if t["p"] >= nxt["top"][0]["p"] - 0.005)
    service.close()
    assert saved_labels(tmp_path, pool) == {card["index"]: 1}


@pytest.mark.parametrize(
    "body",
    [
        {"index": 0, "label": "spor"},  # unknown class
        {"index": 0, "label": ""},
        {"index": "0", "label": "sport"},  # no coercion of strings to numbers
        {"index": -1, "label": "sport"},
        {"index": 10**6, "label": "sport"},
        {"index": 0, "label": "sport", "path": "/etc/passwd"},  # unknown fields are refused
        {"index": 0},
    ],
)
def test_invalid_answers_are_refused_and_record_nothing(service, body):
    c = client_for(service)
    r = c.post("/api/answer", json=body)
    assert r.status_code == 422
    assert service.session.n_labeled == 0 and len(service.session.events) == 0


def test_unknown_class_message_names_the_classes(service):
    r = client_for(service).post("/api/answer", json={"index": 3, "label": "sports"})
    assert r.status_code == 422 and "business, sport, tech" in r.json()["detail"]


def test_non_json_bodies_are_refused(service):
    c = client_for(service)
    r = c.post("/api/answer", content='{"index": 0, "label": "sport"}', headers={"Content-Type": "text/plain"})
    assert r.status_code == 422 and service.session.n_labeled == 0


def test_stale_answer_gets_a_clear_message_and_loses_nothing(pool, tmp_path):
    svc = make_service(pool, tmp_path, lease_seconds=0)  # both tabs are shown the top pick
    a, b = client_for(svc, client_id="tabA"), client_for(svc, client_id="tabB")
    item = a.get("/api/next").json()["index"]
    assert b.get("/api/next").json()["index"] == item
    assert a.post("/api/answer", json={"index": item, "label": "tech"}).status_code == 200
    r = b.post("/api/answer", json={"index": item, "label": "business"})
    assert r.status_code == 409
    body = r.json()
    assert body["stale"] and "already labeled 'tech'" in body["detail"] and "not recorded" in body["detail"]
    assert body["next"]["index"] != item  # the second tab moves on
    assert svc.session.labels == {item: 2}
    svc.close()
    assert saved_labels(tmp_path, pool) == {item: 2}


def test_fresh_leases_give_tabs_different_items(service):
    a, b = client_for(service, client_id="tabA"), client_for(service, client_id="tabB")
    ia = a.get("/api/next").json()["index"]
    ib = b.get("/api/next").json()["index"]
    assert ia != ib
    assert a.get("/api/next").json()["index"] == ia and b.get("/api/next").json()["index"] == ib


def test_leases_expire(pool, tmp_path):
    now = [0.0]
    svc = make_service(pool, tmp_path, lease_seconds=10, clock=lambda: now[0])
    a, b = svc.next_item("tabA")["index"], svc.next_item("tabB")["index"]
    assert a != b
    now[0] = 11.0  # tab A went away: its item is offered again
    assert svc.next_item("tabC")["index"] == a
    svc.close()


def test_skip_undo_redo_and_correct(service):
    c = client_for(service)
    first = c.get("/api/next").json()["index"]
    second = c.post("/api/answer", json={"index": first, "label": "business"}).json()["next"]["index"]
    third = c.post("/api/skip", json={"index": second}).json()["next"]["index"]
    assert service.session.skipped == {second}
    r = c.post("/api/undo", json={"expect_index": second}).json()
    assert r["undone"] == {"op": "skip", "index": second} and r["next"]["index"] == second
    r = c.post("/api/undo", json={"expect_index": first}).json()
    assert r["undone"] == {"op": "tell", "index": first, "label": "business"}
    assert r["next"]["index"] == first and service.session.labels == {}  # the undone item is shown again
    r = c.post("/api/redo", json={}).json()
    assert r["redone"]["index"] == first and service.session.labels == {first: 0}
    r = c.post("/api/correct", json={"index": first, "label": "tech"})
    assert r.status_code == 200 and service.session.labels == {first: 2}
    assert c.post("/api/correct", json={"index": third, "label": "tech"}).status_code == 409  # not labeled
    assert c.post("/api/redo", json={}).status_code == 409  # nothing to redo after a new action


def test_undo_never_takes_back_another_persons_label(service):
    a, b = client_for(service, client_id="tabA"), client_for(service, client_id="tabB")
    ia = a.get("/api/next").json()["index"]
    a.post("/api/answer", json={"index": ia, "label": "sport"})
    ib = b.get("/api/next").json()["index"]
    b.post("/api/answer", json={"index": ib, "label": "tech"})
    r = a.post("/api/undo", json={"expect_index": ia})  # A's own last answer is no longer the last action
    assert r.status_code == 409 and "another" in r.json()["detail"]
    assert service.session.labels == {ia: 1, ib: 2}


def test_retrain_needs_two_classes_then_works(service):
    c = client_for(service)
    i = c.get("/api/next").json()["index"]
    j = c.post("/api/answer", json={"index": i, "label": "sport"}).json()["next"]["index"]
    assert c.post("/api/retrain", json={}).status_code == 422
    c.post("/api/answer", json={"index": j, "label": "tech"})
    r = c.post("/api/retrain", json={})
    assert r.status_code == 200 and r.json()["retrained_on"] == 2
    assert service.session.history[-1]["op"] == "retrain"


def test_panel_has_counts_signals_and_plots(service, pool):
    c = client_for(service)
    _, y, *_ = pool
    card = c.get("/api/next").json()
    for _ in range(12):
        card = c.post("/api/answer", json={"index": card["index"], "label": NAMES[y[card["index"]]]}).json()["next"]
        panel = c.get("/api/panel").json()
    s = panel["stats"]
    assert s["n_labeled"] == 12 and sum(x["count"] for x in s["counts"]) == 12
    assert s["signals_ready"] and 0 < s["expected_accuracy"] <= 1 and 0 <= s["test_accuracy"] <= 1
    assert s["window_labels"] == 10
    # the plots hold one point per label count seen since two classes were labeled
    n_points = len(re.findall(r"<polyline points=\"([^\"]*)\"", s["plots"]["accuracy"])[0].split())
    assert 2 <= n_points <= 12
    assert all(p.startswith("<svg") for p in s["plots"].values())
    assert [r["index"] for r in panel["recent"]][:1] == [list(service.session.labels)[-1]]
    assert c.get("/api/panel").json()["stats"] == s  # cached per state
    # the accuracy estimate with its interval (the model's own: this session has no audit stream)
    e = s["estimate"]
    assert e["method"] == "model" and e["n_audit"] == 0 and e["n_labels"] == 12
    assert 0 <= e["low"] <= e["accuracy"] <= e["high"] <= 1 and e["level"] == 0.9
    assert e["expected_gain"] is None and e["stop"] is False  # no gain before 50 labels
    stop = json.loads(c.get("/api/export/stop.json").text)
    assert stop["estimate"]["accuracy"] == e["accuracy"] and stop["estimate"]["stop_threshold"] == 0.02


def test_exports(service, pool):
    c = client_for(service)
    card = c.get("/api/next").json()
    done = {}
    for label in ["sport", "tech", "business", "tech"]:
        done[card["index"]] = label
        card = c.post("/api/answer", json={"index": card["index"], "label": label}).json()["next"]
    r = c.get("/api/export/labels.csv")
    assert r.headers["content-disposition"] == 'attachment; filename="labels.csv"'
    lines = r.text.strip().split("\n")
    assert lines[0] == "index,label,label_index,item,id,annotator,time,label_doubt" and len(lines) == 5
    rows = [json.loads(line) for line in c.get("/api/export/labels.jsonl").text.splitlines()]
    assert {r["index"]: r["label"] for r in rows} == done
    assert all(r["item"] == pool[2][r["index"]] and NAMES[r["label_index"]] == r["label"] for r in rows)
    # the leave-one-out doubt of each given label, as the session computes it
    doubt = service.session.label_doubt()
    assert all(r["label_doubt"] == pytest.approx(doubt[r["index"]], abs=1e-6) and 0 <= r["label_doubt"] <= 1 for r in rows)
    assert [line.split(",")[7] for line in lines[1:]] == [str(r["label_doubt"]) for r in rows]
    payload = torch.load(io.BytesIO(c.get("/api/export/posterior.pt").content), weights_only=False)
    post = LastLayerLaplace.from_state_dict(payload["posterior"])
    assert payload["class_names"] == NAMES and payload["n_labeled"] == 4
    x = service.session.features[:5]
    torch.testing.assert_close(post.predict_proba(x), service.session.predict_proba(range(5)))


def test_token_is_checked_on_every_request(service):
    secret = "correct-horse-battery"
    good = client_for(service, token=secret)
    assert good.get("/api/info").status_code == 200
    assert good.post("/api/skip", json={"index": 0}).status_code == 200
    bare = TestClient(create_app(service, token=secret), base_url=LOCAL)
    assert bare.get("/api/info").status_code == 401
    assert bare.get("/").status_code == 401
    assert bare.get("/?token=" + secret).status_code == 200
    assert bare.get("/?token=wrong").status_code == 401
    for headers in ({TOKEN_HEADER: "wrong"}, {TOKEN_HEADER: ""}, {"Cookie": f"token={secret}"}):
        assert bare.post("/api/answer", json={"index": 1, "label": "sport"}, headers=headers).status_code == 401
        assert bare.get("/api/export/labels.csv", headers=headers).status_code == 401
    # a token in the query string opens only the page, never the API
    assert bare.get(f"/api/export/labels.csv?token={secret}").status_code == 401
    # with a token, any Host is fine (the server is meant to be reached from elsewhere)
    assert TestClient(create_app(service, token=secret), base_url="http://10.0.0.5:8765",
                      headers={TOKEN_HEADER: secret}).get("/api/info").status_code == 200
    assert service.session.n_labeled == 0 and service.session.skipped == {0}


def test_without_token_the_api_needs_the_header_and_a_local_host(service):
    bare = TestClient(create_app(service), base_url=LOCAL)
    assert bare.get("/").status_code == 200  # the page itself
    # a cross-site form or image cannot add a custom header: refused (CSRF)
    assert bare.post("/api/answer", json={"index": 1, "label": "sport"}).status_code == 401
    assert bare.get("/api/next", headers={TOKEN_HEADER: "-"}).status_code == 200
    rebound = TestClient(create_app(service), base_url="http://evil.example:8765", headers={TOKEN_HEADER: "-"})
    assert rebound.get("/api/info").status_code == 403  # DNS rebinding
    assert service.session.n_labeled == 0


def test_bind_rules():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and not is_loopback("example.org")
    assert check_bind("127.0.0.1", None) is None
    generated = check_bind("0.0.0.0", None)
    assert generated and len(generated) >= 20 and check_bind("0.0.0.0", None) != generated
    assert check_bind("0.0.0.0", "my-long-secret") == "my-long-secret"
    with pytest.raises(InvalidInputError):
        check_bind("0.0.0.0", "short")


def test_concurrent_clients_lose_no_label(pool, tmp_path):
    svc = make_service(pool, tmp_path, lease_seconds=5)
    _, y, *_ = pool
    acked: list[tuple[int, int]] = []
    stale = [0]
    lock = threading.Lock()

    def worker(cid: str) -> None:
        for _ in range(15):
            card = svc.next_item(cid)
            if card["done"]:
                return
            try:
                svc.answer(card["index"], NAMES[y[card["index"]]], cid)
            except StaleAnswerError:
                with lock:
                    stale[0] += 1
                continue
            with lock:
                acked.append((card["index"], int(y[card["index"]])))

    threads = [threading.Thread(target=worker, args=(f"c{k}",)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert len(acked) == svc.acknowledged and len(acked) + stale[0] == 60
    assert len({i for i, _ in acked}) == len(acked)
    svc.close()
    assert saved_labels(tmp_path, pool) == dict(acked)


def test_bad_client_id_is_refused(service):
    c = client_for(service, client_id="../../etc")
    assert c.get("/api/next").status_code == 422


def test_shortcut_keys():
    assert shortcut_keys(["0", "1", "2"]) == ["0", "1", "2"]  # digit classes keep their own keys
    assert shortcut_keys(["a", "b"]) == ["a", "b"]
    assert shortcut_keys(["cat", "dog"]) == ["1", "2"]
    keys = shortcut_keys([f"c{i}" for i in range(40)])
    assert keys[:10] == ["1", "2", "3", "4", "5", "6", "7", "8", "9", "a"]
    assert not {"s", "u", "y"} & set(keys) and keys[-1] is None and len(set(keys[:32])) == 32
    assert shortcut_keys(["s", "t"]) == ["1", "2"]  # 's' is the skip key


def test_storage_failure_is_reported_and_records_nothing(service):
    c = client_for(service)
    i = c.get("/api/next").json()["index"]
    service.session.close()  # e.g. the server is shutting down: the session refuses answers
    r = c.post("/api/answer", json={"index": i, "label": "sport"})
    assert r.status_code == 503 and "nothing was recorded" in r.json()["detail"]
    assert service.acknowledged == 0


def test_exhausted_pool_says_done(tmp_path):
    x = np.random.default_rng(1).normal(size=(4, 3))
    svc = LabelingService(Session(x, ["a", "b"], state_dir=tmp_path / "s", fsync=False, random_state=0), name="tiny")
    c = client_for(svc)
    card = c.get("/api/next").json()
    for k in range(4):
        card = c.post("/api/answer", json={"index": card["index"], "label": "ab"[k % 2]}).json()["next"]
    assert card["done"] and card["index"] is None and card["n_labeled"] == 4
    assert c.get("/api/next").json()["done"]
    svc.close()


def test_page_url():
    from bayesal.serve.server import page_url

    assert page_url("127.0.0.1", 8765, None) == "http://127.0.0.1:8765/"
    assert page_url("0.0.0.0", 80, "tok") == "http://<this machine's address>:80/?token=tok"
    assert page_url("::1", 8000, None) == "http://[::1]:8000/"


def test_names_are_escaped_in_the_page(pool, tmp_path):
    x, *_ = pool
    svc = LabelingService(Session(x, NAMES, state_dir=tmp_path / "s", fsync=False, random_state=0),
                          name='<script>alert("x")</script>')
    page = client_for(svc).get("/").text
    assert "<script>alert" not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    svc.close()


def test_a_background_refit_refreshes_the_cached_picks_and_panel(pool, tmp_path, monkeypatch):
    """The refit of a fit point lands between two answers: what the service cached from the interim
    posterior (the next pick, the panel) is computed again from the refit."""
    import threading

    from bayesal.labeling.replay import PosteriorReplay

    x, y, texts, tx, ty = pool
    release = threading.Event()
    fit = PosteriorReplay.fit

    def gated_fit(replay, labels, position):
        if threading.current_thread() is not threading.main_thread():
            assert release.wait(60)
        return fit(replay, labels, position)

    monkeypatch.setattr(PosteriorReplay, "fit", gated_fit)
    session = Session(x, NAMES, items=texts, random_state=1, options=PosteriorOptions(head=HeadConfig(epochs=10)),
                      candidate_size=None, state_dir=tmp_path / "s", fsync=False, reselect="doubling", reselect_base=4)
    svc = LabelingService(session, name="toy", test_features=tx, test_labels=ty, lease_seconds=0)
    try:
        order = [0] + [i for i in range(1, len(y)) if y[i] != y[0]][:1] + [1, 2, 3, 4]
        for i in list(dict.fromkeys(order))[:4]:
            svc.answer(i, NAMES[y[i]])
        assert session.refit_pending
        interim = svc.stats()["expected_accuracy"]
        assert svc.stats()["expected_accuracy"] == interim  # cached
        release.set()
        assert session.wait_refit(timeout=60) and session.refits_swapped == 1
        refit = svc.stats()["expected_accuracy"]
        fresh = LabelingService(session, name="toy")  # no cache: the panel of the current posterior
        assert refit == fresh.stats()["expected_accuracy"] != interim
        assert svc.next_item()["index"] == session.query(1)[0]
    finally:
        release.set()
        svc.close()


def test_undo_takes_back_only_the_tabs_own_action_whatever_the_body(service):
    a, b = client_for(service, client_id="tabA"), client_for(service, client_id="tabB")
    ia = a.get("/api/next").json()["index"]
    a.post("/api/answer", json={"index": ia, "label": "sport"})
    for body in ({}, {"expect_index": None}, {"expect_index": ia}):  # B has no action of its own
        r = b.post("/api/undo", json=body)
        assert r.status_code == 409 and "another tab" in r.json()["detail"]
    assert service.session.labels == {ia: 1}
    r = a.post("/api/undo", json={})  # A's own last action, even without naming its item
    assert r.status_code == 200 and r.json()["undone"]["index"] == ia and service.session.labels == {}
    # B redoes it: from then on the action is B's, and A can no longer undo it
    assert b.post("/api/redo", json={}).status_code == 200 and service.session.labels == {ia: 1}
    assert a.post("/api/undo", json={"expect_index": ia}).status_code == 409
    assert b.post("/api/undo", json={}).status_code == 200 and service.session.labels == {}


def test_undo_of_an_action_made_before_the_server_started_needs_its_item(pool, tmp_path):
    svc = make_service(pool, tmp_path)
    svc.session.tell(5, 0)  # e.g. labeled in the terminal before `bayesal serve --resume`
    fresh = LabelingService(svc.session)
    c = client_for(fresh, client_id="tabA")
    assert c.post("/api/undo", json={}).status_code == 409
    assert c.post("/api/undo", json={"expect_index": 4}).status_code == 409
    assert c.post("/api/undo", json={"expect_index": 5}).status_code == 200 and svc.session.labels == {}
    svc.close()


@pytest.mark.parametrize(
    "raw",
    [
        '{"index": NaN, "label": "sport"}',
        '{"index": Infinity, "label": "sport"}',
        '{"index": -Infinity, "label": "sport"}',
        '{"index": 1e400, "label": "sport"}',
        '{"index": 2.0, "label": "sport"}',
        '{"index": 1, "label": NaN}',
        '{"index": 1, "label": "sport", "x": NaN}',
        '{"index": 1, "label": "\\ud800"}',
        '{"index": [1], "label": "sport"}',
        '{"index": {"a": 1}, "label": "sport"}',
        '{"index": true, "label": "sport"}',
        '{"index": 1, "label": ["sport"]}',
        '{"index": ' + "9" * 400 + ', "label": "sport"}',
        '{"index": ' + "9" * 5000 + ', "label": "sport"}',
        "[1, 2]",
        "5",
        "null",
        '"sport"',
        "{",
    ],
)
def test_malformed_answer_bodies_get_a_clear_4xx_and_record_nothing(service, raw):
    c = client_for(service)
    for route in ("/api/answer", "/api/correct", "/api/skip", "/api/undo"):
        r = c.post(route, content=raw, headers={"Content-Type": "application/json"})
        assert 400 <= r.status_code < 500, (route, r.status_code, r.text)
        detail = r.json()["detail"]
        assert isinstance(detail, str) and detail and "Traceback" not in detail
    assert service.session.n_labeled == 0 and len(service.session.events) == 0


def test_serve_records_again_once_a_full_disk_has_space(service, pool, tmp_path, monkeypatch):
    import errno
    import os

    c = client_for(service)
    first = c.get("/api/next").json()["index"]
    real_write, full = os.write, [True]

    def write(fd, data):
        if full[0]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    r = c.post("/api/answer", json={"index": first, "label": "sport"})
    assert r.status_code == 503
    detail = r.json()["detail"]
    assert "No space left on device" in detail and "nothing was recorded" in detail
    assert "Session." not in detail and "resume()" not in detail
    assert service.session.labels == {}
    full[0] = False  # space was freed: the same server records again
    r = c.post("/api/answer", json={"index": first, "label": "sport"})
    assert r.status_code == 200 and service.session.labels == {first: 1}
    monkeypatch.undo()
    service.close()
    assert saved_labels(tmp_path, pool) == {first: 1}


def test_a_zero_shot_prior_gives_the_first_card_a_guess(pool, tmp_path):
    x, _, texts, _, _ = pool
    m0 = torch.as_tensor(x[:3], dtype=torch.float64) * 3.0  # the guess: nearest of three pool rows
    session = Session(x, NAMES, items=texts, random_state=1, candidate_size=100, state_dir=tmp_path / "z",
                      fsync=False, prior_mean=m0)
    svc = LabelingService(session, name="toy")
    try:
        card = client_for(svc).get("/api/next").json()
        assert card["n_labeled"] == 0 and card["no_guess"] is None
        expected = int((torch.as_tensor(x[card["index"]], dtype=torch.float64) @ m0.T).argmax())
        assert card["guess"] == [NAMES[expected]] and card["top"][0]["label"] == NAMES[expected]
    finally:
        svc.close()


def test_a_class_added_to_a_zero_shot_session_gets_its_prior_row(pool, tmp_path):
    x, _, texts, _, _ = pool
    m0 = torch.as_tensor(x[:3], dtype=torch.float64)
    session = Session(x, NAMES, items=texts, random_state=1, candidate_size=100, state_dir=tmp_path / "z",
                      fsync=False, prior_mean=m0)
    asked = []

    def row(name):
        asked.append(name)
        return np.full(x.shape[1], 0.5)

    svc = LabelingService(session, name="toy", class_prior=row)
    try:
        r = client_for(svc).post("/api/classes", json={"label": " weather "})
        assert r.status_code == 200, r.text
        assert asked == ["weather"]
        torch.testing.assert_close(svc.session.posterior.prior_mean[3], torch.full((x.shape[1],), 0.5, dtype=torch.float64))
    finally:
        svc.close()

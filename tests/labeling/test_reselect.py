"""Re-selection of λ₀ and the spread as labels arrive: the refit policy and background refits."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from bayesal.exceptions import CorruptStateError, InvalidInputError
from bayesal.labeling.history import UndoCache
from bayesal.labeling.policy import RefitPolicy, is_doubling_point
from bayesal.labeling.replay import PosteriorReplay
from bayesal.labeling.session import LOG_NAME, STATE_NAME, Session
from bayesal.labeling.storage import load_snapshot, read_log
from bayesal.laplace import HeadConfig, PosteriorOptions

NAMES = ["ant", "bee", "cat"]
FAST = PosteriorOptions(head=HeadConfig(epochs=15))
SAVED = Path(__file__).with_name("fixtures") / "saved"
X_SAVED = (np.random.default_rng(0).normal(size=(24, 4)) + np.eye(4)[np.arange(24) % 3] * 2).astype(np.float32)


@pytest.fixture(scope="module")
def pool(clustered_pool):
    x, y, _, _ = clustered_pool()
    return x, y


def make(pool, tmp_path=None, **kw):
    x, _ = pool
    kw.setdefault("random_state", 5)
    kw.setdefault("options", FAST)
    kw.setdefault("candidate_size", 60)
    kw.setdefault("fsync", False)
    if tmp_path is not None:
        kw.setdefault("state_dir", tmp_path / "s")
    return Session(x, NAMES, **kw)


def fit_points(s: Session) -> list[int]:
    """Number of labels after each fit point of the history."""
    out, n = [], 0
    for a in s.history:
        n += a["op"] == "tell"
        if a["op"] == "retrain" or a.get("retrain"):
            out.append(n)
    return out


def assert_same(a, b, atol=1e-10):
    for key in ("mean", "bias", "covariance"):
        torch.testing.assert_close(a.state_dict()[key], b.state_dict()[key], atol=atol, rtol=0)
    assert a.n_updates_ == b.n_updates_


class Gate:
    """Blocks the refits of worker threads (not the main thread's replays) until released."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.release = threading.Event()
        self.started = threading.Semaphore(0)
        self.calls: list[int] = []
        fit = PosteriorReplay.fit

        def blocked_fit(replay, labels, position):
            if threading.current_thread() is not threading.main_thread():
                self.calls.append(position)
                self.started.release()
                if not self.release.wait(60):
                    raise TimeoutError("the test never released the refit")
            return fit(replay, labels, position)

        monkeypatch.setattr(PosteriorReplay, "fit", blocked_fit)

    def wait_started(self) -> None:
        assert self.started.acquire(timeout=60), "the background refit did not start"


# ----------------------------------------------------------------------------- the schedule
def test_doubling_points():
    assert [n for n in range(1, 200) if is_doubling_point(n, 10)] == [10, 20, 40, 80, 160]
    assert [n for n in range(1, 30) if is_doubling_point(n, 3)] == [3, 6, 12, 24]
    assert [n for n in range(1, 20) if is_doubling_point(n, 1)] == [1, 2, 4, 8, 16]
    with pytest.raises(InvalidInputError, match="reselect"):
        RefitPolicy(reselect="halving")
    with pytest.raises(InvalidInputError, match="reselect_base"):
        RefitPolicy(reselect="doubling", base=0)


def test_doubling_schedule_positions_need_two_classes(pool):
    x, y = pool
    s = make(pool, reselect="doubling", reselect_base=3, background=False)
    assert s.config["reselect"] == {"schedule": "doubling", "base": 3}
    first = [i for i in range(len(y)) if y[i] == y[0]][:4]  # 4 labels of one class: no fit at 3
    other = next(i for i in range(len(y)) if y[i] != y[0])
    rest = [other] + [i for i in range(len(y)) if i not in first and i != other][:20]
    for i in first + rest:
        s.tell(i, int(y[i]))
    assert fit_points(s) == [6, 12, 24]
    assert s.posterior.n_updates_ == 1  # the refit at 24 labels, then one update
    # retrain_every works beside it: tells since the last fit point count, whichever schedule set it
    t = make(pool, reselect="doubling", reselect_base=4, retrain_every=3, background=False)
    for i in labeled_order(y, 12):
        t.tell(i, int(y[i]))
    assert fit_points(t) == [3, 4, 7, 8, 11]


def test_the_policy_is_saved_and_resumed(pool, tmp_path):
    x, y = pool
    s = make(pool, tmp_path, reselect="doubling", reselect_base=2, background=False)
    order = labeled_order(y, 8)
    for i in order[:3]:
        s.tell(i, int(y[i]))
    s.close()
    r = Session.resume(tmp_path / "s", x, background=False)
    assert r.refit_policy == RefitPolicy(None, "doubling", 2)
    for i in order[3:8]:
        r.tell(i, int(y[i]))
    assert fit_points(r) == [2, 4, 8]
    r.close()


def test_a_header_without_reselect_resumes_with_the_old_behaviour(tmp_path):
    d = Path(shutil.copytree(SAVED / "session_v1", tmp_path / "s"))
    assert "reselect" not in read_log(d / LOG_NAME).records[0]
    with Session.resume(d, X_SAVED, fsync=False, background=False) as s:
        assert s.refit_policy == RefitPolicy(retrain_every=4)
        since = 0
        for a in s.history:
            since = 0 if (a["op"] == "retrain" or a.get("retrain")) else since + (a["op"] == "tell")
        for i in s.available_indices()[:10]:
            s.tell(int(i), int(i) % 3)
            since += 1
            assert bool(s.history[-1].get("retrain")) is (since >= 4)  # retrain_every alone, no doubling
            since = 0 if since >= 4 else since
        assert s.n_labeled == 16


def test_a_bad_saved_schedule_is_a_corrupt_header(pool, tmp_path):
    x, _ = pool
    make(pool, tmp_path, reselect="doubling").close()
    log = tmp_path / "s" / LOG_NAME
    records = read_log(log).records
    records[0]["reselect"] = {"schedule": "sometimes"}
    from bayesal.labeling.storage import LabelLog

    log.unlink()
    (tmp_path / "s" / STATE_NAME).unlink()
    LabelLog.create(log, records[0], fsync=False).close()
    with pytest.raises(CorruptStateError, match="reselect"):
        Session.resume(tmp_path / "s", x)


# ----------------------------------------------------------------------------- background refits
def labeled_order(y, n):
    """``n`` pool indices whose first two have different classes (so the schedule can fire)."""
    second = next(i for i in range(1, len(y)) if y[i] != y[0])
    return list(dict.fromkeys([0, second, *range(1, len(y))]))[:n]


def test_a_tell_at_a_fit_point_returns_before_the_refit_and_the_swap_is_the_replay(pool, monkeypatch):
    x, y = pool
    gate = Gate(monkeypatch)
    order = labeled_order(y, 9)
    s = make(pool, reselect="doubling", reselect_base=4)
    for i in order[:3]:
        s.tell(i, int(y[i]))
    before = s.posterior
    i = order[3]
    s.tell(i, int(y[i]))  # the 4th label: a fit point, logged at once
    gate.wait_started()
    assert s.history[-1].get("retrain") is True and s.refit_pending
    xi = torch.as_tensor(x[i : i + 1], dtype=torch.float64)
    assert_same(s.posterior, before.update(xi, torch.tensor([int(y[i])])), atol=1e-12)
    # answers go on while the refit runs: updates of the interim posterior, queries from it
    for j in order[4:6]:
        s.tell(j, int(y[j]))
    s.skip(order[6])
    s.correct(order[0], (int(y[order[0]]) + 1) % 3)
    assert s.posterior.n_updates_ == 6 and s.refit_pending
    assert len(s.query(2)) == 2
    gate.release.set()
    assert s.wait_refit(timeout=60)
    assert not s.refit_pending
    assert_same(s.posterior, s.replay())
    assert s.posterior.n_updates_ == 2  # the refit on 4 labels, then the 2 tells logged after it
    # the undo cache entries after the fit point were rebuilt from the refit: each undo is the replay
    for _ in range(4):
        s.undo()
        assert_same(s.posterior, s.replay())
    # ... and the same events in a synchronous session give the same posterior
    t = make(pool, reselect="doubling", reselect_base=4, background=False)
    for ev in s.events:
        if ev["op"] in ("tell", "correct"):
            getattr(t, ev["op"])(ev["index"], ev["label"])
        elif ev["op"] == "skip":
            t.skip(ev["index"])
        else:
            getattr(t, ev["op"])()
    untimed = [[{k: v for k, v in a.items() if k != "t"} for a in u.history] for u in (s, t)]
    assert untimed[0] == untimed[1]
    assert_same(s.posterior, t.posterior)
    s.close()


def test_a_newer_fit_point_supersedes_the_pending_one(pool, monkeypatch):
    x, y = pool
    gate = Gate(monkeypatch)
    order = labeled_order(y, 8)
    s = make(pool, reselect="doubling", reselect_base=2)
    for i in order[:2]:
        s.tell(i, int(y[i]))  # fit point at 2 labels: its refit blocks
    gate.wait_started()
    for i in order[2:5]:
        s.tell(i, int(y[i]))  # fit point at 4 labels supersedes it
    assert fit_points(s) == [2, 4] and s.refit_pending
    gate.release.set()
    assert s.wait_refit(timeout=60)
    assert gate.calls[0] == 1 and gate.calls[-1] == 3  # the first ran; the newest is the one kept
    assert_same(s.posterior, s.replay())
    # the states between the two fit points never got the first refit: undo replays them instead
    while s.can_undo:
        s.undo()
        assert_same(s.posterior, s.replay())
    s.close()


def test_undo_across_a_pending_refit(pool, monkeypatch):
    x, y = pool
    gate = Gate(monkeypatch)
    order = labeled_order(y, 8)
    s = make(pool, reselect="doubling", reselect_base=3)
    for i in order[:3]:
        s.tell(i, int(y[i]))  # fit point at 3 labels
    gate.wait_started()
    s.tell(order[3], int(y[order[3]]))
    interim = s.posterior
    s.undo()  # an action after the fit point: the refit stays pending
    assert s.refit_pending and s.posterior.n_updates_ == interim.n_updates_ - 1
    s.redo()
    assert_same(s.posterior, interim, atol=0)
    s.undo()
    s.undo()  # the fit point itself: its refit is dropped, the posterior is the one before it
    assert not s.refit_pending
    assert_same(s.posterior, s.replay())
    assert s.posterior.n_updates_ == 2
    gate.release.set()
    assert s.wait_refit(timeout=60)
    assert_same(s.posterior, s.replay())  # the dropped refit did not land
    s.redo()  # the fit point again: a new background refit
    assert s.wait_refit(timeout=60)
    assert_same(s.posterior, s.replay())
    assert s.posterior.n_updates_ == 0
    s.close()


def test_undo_of_a_superseding_fit_point_replays(pool, monkeypatch):
    x, y = pool
    gate = Gate(monkeypatch)
    order = labeled_order(y, 6)
    s = make(pool, reselect="doubling", reselect_base=2)
    for i in order[:4]:
        s.tell(i, int(y[i]))  # fit points at 2 and 4, both pending (the first one blocked)
    gate.wait_started()
    s.undo()  # the newer fit point: the state before it never got the first refit, so it is replayed
    assert not s.refit_pending
    assert_same(s.posterior, s.replay())
    assert s.posterior.n_updates_ == 1
    gate.release.set()
    assert s.wait_refit(timeout=60)
    assert_same(s.posterior, s.replay())
    s.close()


def test_no_snapshot_of_an_interim_posterior_and_a_crash_resumes_to_the_replay(pool, tmp_path, monkeypatch):
    x, y = pool
    gate = Gate(monkeypatch)
    order = labeled_order(y, 8)
    s = make(pool, tmp_path, reselect="doubling", reselect_base=4, async_snapshot=False)
    for i in order[:3]:
        s.tell(i, int(y[i]))
    assert len(load_snapshot(tmp_path / "s" / STATE_NAME)["events"]) == 3
    for i in order[3:6]:
        s.tell(i, int(y[i]))  # the fit point at 4, then two tells while its refit is pending
    gate.wait_started()
    s.flush()  # nothing to write: the live posterior is the interim one
    assert len(load_snapshot(tmp_path / "s" / STATE_NAME)["events"]) == 3
    # the process dies now: the copy holds the log with the fit point and the snapshot before it
    shutil.copytree(tmp_path / "s", tmp_path / "crashed")
    with Session.resume(tmp_path / "crashed", x, background=False) as r:
        assert r.history == s.history and not r.refit_pending
        assert_same(r.posterior, s.replay())
        expected = r.posterior
    gate.release.set()
    assert s.wait_refit(timeout=60)
    assert_same(s.posterior, expected)
    s.flush()  # once swapped, the snapshot is written
    snap = load_snapshot(tmp_path / "s" / STATE_NAME)
    assert len(snap["events"]) == 6
    s.close()
    with Session.resume(tmp_path / "s", x) as r:
        assert_same(r.posterior, expected)


def test_the_swap_writes_the_snapshot_it_held_back(pool, tmp_path, monkeypatch):
    x, y = pool
    gate = Gate(monkeypatch)
    order = labeled_order(y, 5)
    s = make(pool, tmp_path, reselect="doubling", reselect_base=4, async_snapshot=False)
    for i in order[:4]:
        s.tell(i, int(y[i]))
    gate.wait_started()
    gate.release.set()
    assert s.wait_refit(timeout=60)
    s._engine.store.drain()  # the swap hands the snapshot to the background writer
    snap = load_snapshot(tmp_path / "s" / STATE_NAME)
    assert len(snap["events"]) == 4
    assert torch.equal(snap["posterior"]["mean"], s.posterior.state_dict()["mean"])
    s.close()


def test_close_waits_for_the_pending_refit(pool, tmp_path, monkeypatch):
    x, y = pool
    gate = Gate(monkeypatch)
    order = labeled_order(y, 4)
    s = make(pool, tmp_path, reselect="doubling", reselect_base=4)
    for i in order:
        s.tell(i, int(y[i]))
    gate.wait_started()
    closer = threading.Thread(target=s.close)
    closer.start()
    closer.join(0.2)
    assert closer.is_alive()  # close is waiting for the refit
    gate.release.set()
    closer.join(60)
    assert not closer.is_alive()
    snap = load_snapshot(tmp_path / "s" / STATE_NAME)  # the final snapshot holds the refit
    assert len(snap["events"]) == 4
    with Session.resume(tmp_path / "s", x) as r:
        assert r.posterior.n_updates_ == 0
        torch.testing.assert_close(snap["posterior"]["mean"], r.posterior.state_dict()["mean"], atol=0, rtol=0)


def test_a_failed_refit_is_reported_and_keeps_the_interim_posterior(pool, monkeypatch):
    x, y = pool

    def broken_fit(replay, labels, position):
        raise FloatingPointError("the head diverged")

    order = labeled_order(y, 4)
    s = make(pool, reselect="doubling", reselect_base=4)
    for i in order[:3]:
        s.tell(i, int(y[i]))
    monkeypatch.setattr(PosteriorReplay, "fit", broken_fit)
    s.tell(order[3], int(y[order[3]]))
    with pytest.raises(FloatingPointError, match="diverged"):
        s.wait_refit(timeout=60)
    assert s.refit_pending and s.posterior.n_updates_ == 4
    s.undo()  # the fit point leaves: nothing pending any more
    assert not s.refit_pending and s.wait_refit()
    s.close()


def test_undo_cache_replace_and_forget():
    c: UndoCache[int] = UndoCache(2)
    for v in range(4):
        c.push(v)
    c.replace(1, 10)  # no longer kept: stays forgotten
    c.replace(3, 30)
    assert c.peek() == 30
    c.forget(2, 4)
    assert c.pop() is None and c.pop() is None and len(c) == 2

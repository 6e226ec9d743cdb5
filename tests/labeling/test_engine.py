"""The labeling engine on its own: the write path of an event, the resume of a log and the posterior
arithmetic, with a toy fold (a running sum) instead of a session; and a session folder written
before the engine existed, reopened as it was."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bayesal.exceptions import InvalidInputError, StorageError
from bayesal.labeling import (
    LabelingEngine,
    LogFiles,
    PosteriorFold,
    Session,
    SessionStore,
    StorageOptions,
    log_header,
)
from bayesal.labeling.storage import STATE_NAME, load_snapshot, read_log
from bayesal.laplace.head import HeadConfig

FILES = LogFiles(log="events.log", snapshot="sum.state")
FAST = StorageOptions(fsync=False, async_snapshot=False)


class SumFold:
    """Events ``{"add": n}``; the 'posterior' is their sum. Negative numbers are refused."""

    def __init__(self) -> None:
        self.total: int | None = None
        self.absorbed: list[int] = []
        self.seen: list[int] = []

    def prepare(self, event: Mapping[str, Any], where: str | None = None) -> Callable[[], None]:
        if event["add"] < 0:
            raise InvalidInputError(f"{where or 'new event'}: negative")
        after = (self.total or 0) + event["add"]

        def commit() -> None:
            self.total = after
            self.seen.append(event["seq"])

        return commit

    def absorb(self, event: Mapping[str, Any], where: str) -> None:
        self.absorbed.append(event["seq"])

    def start(self, saved: Any | None) -> None:
        self.total = saved if saved is not None else None

    def snapshot_state(self) -> dict[str, Any] | None:
        return None if self.total is None else {"total": self.total}


def new_engine(path) -> LabelingEngine:
    store = SessionStore.open(path, FAST, FILES)
    store.create_log(log_header(1, kind="sum"))
    return LabelingEngine(SumFold(), store)


def test_record_numbers_logs_commits_and_snapshots(tmp_path):
    engine = new_engine(tmp_path)
    for n in (3, 4):
        engine.record({"add": n})
    assert engine.n_events == 2 and engine.fold.total == 7 and engine.fold.seen == [1, 2]
    records = read_log(tmp_path / FILES.log).records
    assert records[0]["kind"] == "sum" and records[0]["seed"] == 1
    assert [(r["seq"], r["add"]) for r in records[1:]] == [(1, 3), (2, 4)]
    assert engine.store is not None and engine.store.load_snapshot() == {"total": 7}
    engine.close()
    assert not engine.is_open


def test_a_refused_event_changes_nothing_and_a_failed_write_commits_nothing(tmp_path):
    engine = new_engine(tmp_path)
    engine.record({"add": 1})
    with pytest.raises(InvalidInputError):
        engine.record({"add": -1})
    assert engine.n_events == 1 and engine.fold.total == 1
    assert len(read_log(tmp_path / FILES.log).records) == 2
    engine.close()  # the log is closed: a write fails, nothing is committed
    with pytest.raises(StorageError):
        engine.record({"add": 5})
    assert engine.n_events == 1 and engine.fold.total == 1


def test_resume_absorbs_what_the_snapshot_holds_and_applies_the_rest(tmp_path):
    events = [{"seq": k, "add": k} for k in range(1, 6)]
    engine = LabelingEngine(SumFold())
    engine.resume(events, cached=3, saved=6)  # the snapshot's total after events 1..3
    assert engine.fold.absorbed == [1, 2, 3] and engine.fold.seen == [4, 5] and engine.fold.total == 15
    assert engine.n_events == 5
    for cached, saved in ((9, 100), (2, None)):  # a snapshot past the log, or none: everything is absorbed
        engine = LabelingEngine(SumFold())
        engine.resume(events, cached=cached, saved=saved)
        assert engine.fold.absorbed == [1, 2, 3, 4, 5] and engine.fold.seen == [] and engine.fold.total is None
    engine = LabelingEngine(SumFold())
    with pytest.raises(InvalidInputError, match="line 3: negative"):
        engine.resume([{"seq": 1, "add": 1}, {"seq": 2, "add": -1}], cached=1, saved=1, where=lambda k: f"line {k + 2}")


def test_posterior_fold_prior_refits_and_updates():
    fold = PosteriorFold({"prior_precision": 2.0, "head_config": HeadConfig(solver="radam", epochs=3)}, seed=5, tag="t")
    prior = fold.prior(3, 4)
    assert prior is fold.prior(3, 4)  # shared: posteriors are never modified in place
    torch.testing.assert_close(prior.state_dict()["mean"], torch.zeros(3, 4, dtype=torch.float64))
    torch.testing.assert_close(prior.state_dict()["covariance"], torch.eye(4, dtype=torch.float64) / 2)
    x = torch.randn(12, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = torch.arange(12) % 3
    a, b, c = fold.fit(x, y, 3, position=1), fold.fit(x, y, 3, position=1), fold.fit(x, y, 3, position=2)
    torch.testing.assert_close(a.state_dict()["mean"], b.state_dict()["mean"])  # seeded by (seed, tag, position)
    assert not torch.equal(a.state_dict()["mean"], c.state_dict()["mean"])
    after = fold.update(prior, x[:1], y[:1])
    assert after is not prior and after.state_dict()["mean"].abs().sum() > 0
    torch.testing.assert_close(prior.state_dict()["mean"], torch.zeros(3, 4, dtype=torch.float64))


# ----------------------------------------------------------------------------- folders saved before
SAVED = Path(__file__).with_name("fixtures") / "saved"
#: the pool of fixtures/saved/session_v1, a session written by bayesal before the labeling engine
#: (retrain_every=4 with a seeded 3-epoch minibatch head, tells, a skip, a correction, a retrain, an undo)
X_SAVED = (np.random.default_rng(0).normal(size=(24, 4)) + np.eye(4)[np.arange(24) % 3] * 2).astype(np.float32)


@pytest.mark.parametrize("from_log_only", [False, True])
def test_a_session_saved_before_the_engine_reopens_as_it_was(tmp_path, from_log_only):
    d = Path(shutil.copytree(SAVED / "session_v1", tmp_path / "s"))
    expected = json.loads((SAVED / "session_v1.json").read_text())
    saved = load_snapshot(d / STATE_NAME)["posterior"]
    if from_log_only:  # every posterior replayed: the seeded refits and the updates as they were
        (d / STATE_NAME).unlink()
        s = Session.recover(d, X_SAVED, fsync=False)
    else:
        s = Session.resume(d, X_SAVED, fsync=False)
    with s:
        for key in ("mean", "bias", "covariance"):
            torch.testing.assert_close(s.posterior.state_dict()[key], saved[key], atol=1e-10, rtol=0)
        assert s.labels == {int(i): c for i, c in expected["labels"].items()}
        assert sorted(s.skipped) == expected["skipped"] and len(s.events) == expected["n_events"]
        assert s.query(3) == expected["query"]

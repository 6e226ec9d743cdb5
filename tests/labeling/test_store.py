"""The session store on its own: create / lock / plan / append / snapshot / close, without a posterior.

Snapshots here are plain dicts of events; the store never looks inside them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bayesal.exceptions import (
    InvalidInputError,
    SessionExistsError,
    SessionLockedError,
    SessionNotFoundError,
    StorageError,
)
from bayesal.labeling.recovery import TORN_NOTE
from bayesal.labeling.storage import (
    FORMAT_VERSION,
    LOG_NAME,
    STATE_NAME,
    LabelLog,
    encode_record,
    load_snapshot,
    read_log,
)
from bayesal.labeling.store import SessionStore, SnapshotWriter, StorageOptions

HEADER = {"op": "header", "seq": 0, "format": FORMAT_VERSION, "session_id": "s1"}
FAST = StorageOptions(fsync=False, async_snapshot=False)


def event(seq: int) -> dict:
    return {"op": "tell", "seq": seq, "index": seq, "label": 0}


def state(events: list[dict]) -> dict:
    return {"format": FORMAT_VERSION, "header": HEADER, "events": list(events), "posterior": {}}


def new_store(d: Path, options: StorageOptions = FAST, n_events: int = 0) -> tuple[SessionStore, list[dict]]:
    store = SessionStore.create(d, HEADER, options)
    store.snapshot(state([]), sync=True)
    events: list[dict] = []
    for k in range(1, n_events + 1):
        events.append(event(k))
        store.append(events[-1])
        store.committed(lambda: state(events))
    return store, events


# ----------------------------------------------------------------------------- options
def test_storage_options_validate_and_override():
    assert StorageOptions() == StorageOptions(fsync=True, snapshot_every=1, async_snapshot=True,
                                              snapshot_interval=0.2, undo_cache=32)
    base = StorageOptions(fsync=False)
    assert StorageOptions.build(base, {"snapshot_every": 5}) == StorageOptions(fsync=False, snapshot_every=5)
    assert StorageOptions.build(None, {}) == StorageOptions()
    with pytest.raises(InvalidInputError, match=r"unknown storage option\(s\) \['fsnyc'\]"):
        StorageOptions.build(None, {"fsnyc": False})
    for bad, msg in [({"snapshot_every": 0}, "snapshot_every"), ({"snapshot_every": True}, "snapshot_every"),
                     ({"snapshot_interval": -1.0}, "snapshot_interval"), ({"undo_cache": -1}, "undo_cache")]:
        with pytest.raises(InvalidInputError, match=msg):
            StorageOptions(**bad)


# ----------------------------------------------------------------------------- create / lock
def test_create_writes_the_header_and_refuses_an_occupied_directory(tmp_path):
    d = tmp_path / "new" / "dir"
    store, _ = new_store(d)
    assert read_log(d / LOG_NAME).records == [HEADER]
    assert load_snapshot(d / STATE_NAME)["events"] == []
    with pytest.raises(SessionExistsError, match="already holds a labeling session"):
        SessionStore.create(d, HEADER, FAST)
    store.close()
    with pytest.raises(SessionExistsError):
        SessionStore.create(d, HEADER, FAST)  # closed or not, a session is never overwritten


def test_create_replaces_only_an_abandoned_log(tmp_path):
    (tmp_path / LOG_NAME).write_bytes(b"0000abcd {")  # died before the header line was complete
    store = SessionStore.create(tmp_path, HEADER, FAST)
    assert read_log(tmp_path / LOG_NAME).records == [HEADER]
    store.close()


def test_the_directory_lock_excludes_a_second_opener(tmp_path):
    store, _ = new_store(tmp_path, n_events=2)
    with pytest.raises(SessionLockedError, match="open for writing elsewhere"):
        SessionStore.lock(tmp_path, FAST)
    store.close()
    again = SessionStore.lock(tmp_path, FAST)
    again.close()
    with pytest.raises(SessionNotFoundError):
        SessionStore.lock(tmp_path / "nothing", FAST)


def test_lock_plan_open_continues_the_log(tmp_path):
    store, events = new_store(tmp_path, StorageOptions(fsync=False, async_snapshot=False, snapshot_every=100), 3)
    store.close()
    good = (tmp_path / LOG_NAME).read_bytes()
    (tmp_path / LOG_NAME).write_bytes(good + encode_record(event(4))[:-3])  # a torn write
    reopened = SessionStore.lock(tmp_path, FAST)
    plan = reopened.plan(recover=False)
    assert plan.events == events and plan.cached == 0 and plan.notes == [TORN_NOTE] and plan.write_snapshot
    assert not reopened.is_open
    reopened.open_log(plan)
    assert reopened.is_open and (tmp_path / LOG_NAME).read_bytes() == good
    reopened.append(event(4))
    reopened.close()
    assert [r.get("seq") for r in read_log(tmp_path / LOG_NAME).records] == [0, 1, 2, 3, 4]


# ----------------------------------------------------------------------------- append / snapshot
def test_snapshots_follow_snapshot_every(tmp_path):
    store, events = new_store(tmp_path, StorageOptions(fsync=False, async_snapshot=False, snapshot_every=3), 7)
    assert len(read_log(tmp_path / LOG_NAME).records) == 8  # every event is in the log at once
    assert load_snapshot(tmp_path / STATE_NAME)["events"] == events[:6]  # snapshots after events 3 and 6
    store.close()


def test_background_snapshots_coalesce_until_drained(tmp_path):
    options = StorageOptions(fsync=False, async_snapshot=True, snapshot_interval=30.0)
    store, events = new_store(tmp_path, options)
    for k in range(1, 6):
        events.append(event(k))
        store.append(events[-1])
        store.committed(lambda: state(events))
    assert len(load_snapshot(tmp_path / STATE_NAME)["events"]) <= 1  # throttled: at most the first one
    store.drain()
    assert load_snapshot(tmp_path / STATE_NAME)["events"] == events
    store.close()


def test_a_failed_append_blocks_every_later_one(tmp_path, monkeypatch):
    store, _ = new_store(tmp_path, n_events=1)

    def disk_full(self, record):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(LabelLog, "append", disk_full)
    with pytest.raises(StorageError, match="No space") as info:
        store.append(event(2))
    assert isinstance(info.value, OSError)
    monkeypatch.undo()
    with pytest.raises(StorageError, match="could not be written"):
        store.append(event(2))
    store.close()
    assert len(read_log(tmp_path / LOG_NAME).records) == 2


@pytest.mark.parametrize("partial", [False, True])
def test_a_write_that_failed_cleanly_lets_later_appends_through(tmp_path, monkeypatch, partial):
    import errno
    import os

    store, _ = new_store(tmp_path, n_events=1)
    real_write, disk = os.write, {"full": True, "half": partial}

    def write(fd, data):  # the disk is full (after taking half of the line, with ``partial``)
        if not disk["full"]:
            return real_write(fd, data)
        if disk["half"]:
            disk["half"] = False
            return real_write(fd, bytes(data)[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", write)
    with pytest.raises(StorageError, match="not recorded"):
        store.append(event(2))
    disk["full"] = False  # space was freed: the log was cut back to its last full line, so recording goes on
    store.append(event(2))
    store.close()
    assert [r["seq"] for r in read_log(tmp_path / LOG_NAME).records[1:]] == [1, 2]


def test_a_closed_store_refuses_events(tmp_path):
    store, _ = new_store(tmp_path)
    store.close()
    store.close()  # idempotent
    with pytest.raises(StorageError, match="closed"):
        store.append(event(1))


def test_snapshot_writer_reports_a_failed_write(tmp_path):
    writer = SnapshotWriter(tmp_path / "missing-dir" / STATE_NAME, fsync=False)
    writer.submit(state([]))
    with pytest.raises(StorageError, match="writing the snapshot"):
        writer.flush()
    writer.close()


def test_a_failed_background_snapshot_is_superseded_by_a_later_one(tmp_path, monkeypatch):
    """A background write that failed (a full disk, since freed) neither blocks a later synchronous
    snapshot, e.g. the one a session writes on close, nor is reported once a later write succeeded."""
    import threading

    import bayesal.labeling.store as store_module

    options = StorageOptions(fsync=False, async_snapshot=True, snapshot_interval=0.0)
    store, events = new_store(tmp_path, options)
    real, full, failed = store_module.save_snapshot, [True], threading.Event()

    def save(path, st, fsync):
        if full[0]:
            failed.set()
            raise StorageError(f"could not write {path}: the disk is full")
        return real(path, st, fsync=fsync)

    def fail_in_background() -> None:
        failed.clear()
        full[0] = True
        store.snapshot(state(events), sync=False)
        assert failed.wait(10)
        full[0] = False  # space again

    monkeypatch.setattr(store_module, "save_snapshot", save)
    events.append(event(1))
    store.append(events[-1])
    fail_in_background()
    with pytest.raises(StorageError, match="writing the snapshot"):
        store.drain()  # the latest background write failed: reported
    fail_in_background()
    events.append(event(2))
    store.append(events[-1])
    store.snapshot(state(events), sync=False)
    store.drain()  # a later write succeeded: nothing to report
    assert load_snapshot(tmp_path / STATE_NAME)["events"] == events
    fail_in_background()
    events.append(event(3))
    store.append(events[-1])
    store.snapshot(state(events), sync=True)  # the failed background write does not stop the synchronous one
    assert load_snapshot(tmp_path / STATE_NAME)["events"] == events
    store.close()

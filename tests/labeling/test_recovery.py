"""Recovery planning on session directories written by hand: pure file and event logic, no posterior.

The snapshot's posterior is an opaque dict here; only the events, the headers and the bytes matter.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bayesal.exceptions import CorruptStateError, SessionNotFoundError
from bayesal.labeling.recovery import (
    TORN_NOTE,
    carry_out,
    plan_recovery,
    plan_resume,
    read_session_header,
    read_session_log,
    scan_directory,
)
from bayesal.labeling.storage import FORMAT_VERSION, LOG_NAME, STATE_NAME, LabelLog, encode_record, save_snapshot

POSTERIOR = {"opaque": [1, 2, 3]}


def header(session_id: str = "s1") -> dict:
    return {"op": "header", "seq": 0, "format": FORMAT_VERSION, "session_id": session_id, "class_names": ["a", "b"]}


def tells(n: int, start: int = 1) -> list[dict]:
    return [{"op": "tell", "seq": k, "index": k, "label": k % 2} for k in range(start, start + n)]


def write_log(d: Path, events: list[dict], session_id: str = "s1") -> None:
    log = LabelLog.create(d / LOG_NAME, header(session_id), fsync=False)
    for ev in events:
        log.append(ev)
    log.close()


def write_snapshot(d: Path, events: list[dict], session_id: str = "s1", **extra: object) -> None:
    state = {"format": FORMAT_VERSION, "header": header(session_id), "events": events, "posterior": POSTERIOR}
    state.update(extra)
    save_snapshot(d / STATE_NAME, state, fsync=False)


def files(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def damage_line(d: Path, k: int) -> None:
    lines = (d / LOG_NAME).read_bytes().splitlines(keepends=True)
    lines[k] = lines[k].replace(b'"op"', b'"oq"')  # the checksum no longer matches
    (d / LOG_NAME).write_bytes(b"".join(lines))


@pytest.fixture
def d(tmp_path: Path) -> Path:
    return tmp_path


# ----------------------------------------------------------------------------- resume (strict)
def test_resume_of_an_up_to_date_directory_replays_nothing(d):
    write_log(d, tells(3))
    write_snapshot(d, tells(3))
    before = files(d)
    plan = plan_resume(d)
    assert plan.events == tells(3) and plan.cached == 3 and plan.posterior_state == POSTERIOR
    assert not plan.rewrite_log and not plan.write_snapshot and not plan.notes
    assert plan.valid_bytes == (d / LOG_NAME).stat().st_size
    assert files(d) == before  # planning touches no file


def test_resume_with_a_lagging_snapshot_applies_the_newer_log_events(d):
    write_log(d, tells(5))
    write_snapshot(d, tells(2))
    plan = plan_resume(d)
    assert plan.events == tells(5) and plan.cached == 2 and plan.write_snapshot and not plan.rewrite_log
    assert plan.where(0) == "state file event 1" and plan.where(4) == "label log line 6"


def test_resume_with_a_log_shorter_than_the_snapshot_rewrites_the_log(d):
    write_log(d, tells(2))
    write_snapshot(d, tells(4))
    plan = plan_resume(d)
    assert plan.events == tells(4) and plan.rewrite_log and not plan.write_snapshot
    assert plan.notes == ["the label log lacked events the state file holds; rewrote it from them"]
    carry_out(plan, d, fsync=False).close()
    assert read_session_log(d)[1] == tells(4)


def test_resume_drops_a_torn_last_line(d):
    write_log(d, tells(2))
    write_snapshot(d, tells(2))
    good = (d / LOG_NAME).read_bytes()
    (d / LOG_NAME).write_bytes(good + encode_record(tells(1, start=3)[0])[:-4])
    plan = plan_resume(d)
    assert plan.events == tells(2) and plan.notes == [TORN_NOTE] and plan.valid_bytes == len(good)
    carry_out(plan, d, fsync=False).close()
    assert (d / LOG_NAME).read_bytes() == good  # truncated before anything is appended


def test_resume_without_snapshot_is_a_recovery_from_the_log(d):
    write_log(d, tells(3))
    plan = plan_resume(d)
    assert plan.events == tells(3) and plan.posterior_state is None and plan.write_snapshot
    assert plan.where(0) == "label log line 2"


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: write_snapshot(d, tells(2)), "label log .* is missing; Session.recover"),
        (lambda d: (write_log(d, tells(2)), (d / STATE_NAME).write_bytes(b"garbage")), "state file .* is corrupt"),
        (lambda d: (write_log(d, tells(2)), write_snapshot(d, tells(2)), damage_line(d, 2)), "corrupt at line 3"),
        (lambda d: (write_log(d, tells(2)), write_snapshot(d, tells(2), session_id="other")), "another session"),
        (lambda d: (write_log(d, tells(2)), write_snapshot(d, tells(1) + [{"op": "skip", "seq": 2, "index": 7}])),
         "disagree at event 2"),
    ],
    ids=["log-missing", "snapshot-garbage", "log-damaged", "other-session", "disagree"],
)
def test_resume_refuses_damage_and_changes_nothing(d, setup, message):
    setup(d)
    before = files(d)
    with pytest.raises(CorruptStateError, match=message):
        plan_resume(d)
    assert files(d) == before


def test_resume_refuses_a_snapshot_without_posterior(d):
    write_log(d, tells(1))
    save_snapshot(d / STATE_NAME, {"format": FORMAT_VERSION, "header": header(), "events": tells(1)}, fsync=False)
    with pytest.raises(CorruptStateError, match="missing entry 'posterior'"):
        plan_resume(d)
    assert plan_recovery(d).events == tells(1)  # recovery needs only the events


def test_no_session_at_all(d):
    for plan in (plan_resume, plan_recovery):
        with pytest.raises(SessionNotFoundError):
            plan(d)
    with pytest.raises(FileNotFoundError):  # still a FileNotFoundError for callers that expect one
        plan_resume(d)


# ----------------------------------------------------------------------------- recovery
def test_recovery_rebuilds_a_missing_log_from_the_snapshot(d):
    write_snapshot(d, tells(3))
    plan = plan_recovery(d)
    assert plan.rewrite_log and plan.log_aside is None and plan.events == tells(3)
    assert "rebuilt the label log from the state file's 3 events" in plan.notes[0]
    carry_out(plan, d, fsync=False).close()
    hdr, events, _ = read_session_log(d)
    assert hdr == header() and events == tells(3)


def test_recovery_prefers_a_snapshot_that_extends_a_damaged_log(d):
    write_log(d, tells(5))
    write_snapshot(d, tells(5))
    damage_line(d, 3)
    damaged = (d / LOG_NAME).read_bytes()
    plan = plan_recovery(d)
    assert plan.events == tells(5) and plan.rewrite_log and plan.log_aside == "damaged"
    carry_out(plan, d, fsync=False).close()
    assert (d / (LOG_NAME + ".damaged")).read_bytes() == damaged  # kept aside, not deleted
    assert read_session_log(d)[1] == tells(5)


def test_recovery_of_a_damaged_log_without_snapshot_needs_drop_damaged(d):
    write_log(d, tells(5))
    (d / STATE_NAME).write_bytes(b"garbage")
    damage_line(d, 3)
    before = files(d)
    with pytest.raises(CorruptStateError, match="drop-damaged.*3 line"):
        plan_recovery(d)
    assert files(d) == before
    plan = plan_recovery(d, drop_damaged=True)
    assert plan.events == tells(2) and plan.log_aside == "damaged" and plan.state_aside == "corrupt"
    assert any("the 3 line(s) from the damage on were not replayed" in n for n in plan.notes)
    carry_out(plan, d, fsync=False).close()
    assert (d / (STATE_NAME + ".corrupt")).read_bytes() == b"garbage"
    assert (d / (LOG_NAME + ".damaged")).exists() and not (d / STATE_NAME).exists()
    assert read_session_log(d)[1] == tells(2)


@pytest.mark.parametrize(
    ("snapshot", "why"),
    [
        (lambda d: write_snapshot(d, tells(1), session_id="other"), "belongs to another session"),
        (lambda d: write_snapshot(d, [{"op": "skip", "seq": 1, "index": 9}]), "disagrees with the label log"),
    ],
)
def test_recovery_trusts_an_intact_log_over_a_foreign_snapshot(d, snapshot, why):
    write_log(d, tells(2))
    snapshot(d)
    old_snapshot = (d / STATE_NAME).read_bytes()
    plan = plan_recovery(d)
    assert plan.events == tells(2) and not plan.rewrite_log and plan.state_aside == "replaced"
    assert plan.notes == [f"the state file {why}; kept as {STATE_NAME}.replaced"]
    carry_out(plan, d, fsync=False).close()
    assert (d / (STATE_NAME + ".replaced")).read_bytes() == old_snapshot


def test_recovery_keeps_a_lagging_snapshot_in_place(d):
    write_log(d, tells(4))
    write_snapshot(d, tells(2))
    plan = plan_recovery(d)
    assert plan.events == tells(4) and plan.state_aside is None and not plan.notes


def test_read_session_header_falls_back_to_the_snapshot(d):
    write_log(d, tells(1))
    write_snapshot(d, tells(1))
    assert read_session_header(d) == header()
    damage_line(d, 0)
    assert read_session_header(d) == header()
    (d / STATE_NAME).write_bytes(b"garbage")
    with pytest.raises(CorruptStateError, match="has a readable session header"):
        read_session_header(d)
    with pytest.raises(SessionNotFoundError):
        read_session_header(d / "empty")


def test_scan_reports_each_side(d):
    write_log(d, tells(3))
    write_snapshot(d, tells(3), session_id="other")
    damage_line(d, 2)
    scan = scan_directory(d)
    assert scan.header == header() and scan.events == tells(1) and scan.dropped == 2
    assert isinstance(scan.log_problem, CorruptStateError) and not scan.same_session
    assert scan.snap_events == tells(3) and scan.snap_problem is None


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 6), cut=st.integers(0, 10_000))
def test_a_crash_at_any_byte_keeps_exactly_the_complete_lines(tmp_path_factory, n, cut):
    """Whatever byte a write stops at, recovery keeps the events whose lines are complete."""
    d = tmp_path_factory.mktemp("crash")
    write_log(d, tells(n))
    raw = (d / LOG_NAME).read_bytes()
    cut = len(raw) - cut % (len(raw) - len(encode_record(header())) + 1)  # inside the events, header intact
    (d / LOG_NAME).write_bytes(raw[:cut])
    complete = raw[:cut].count(b"\n") - 1
    plan = plan_recovery(d)
    assert plan.events == tells(n)[:complete]
    assert (TORN_NOTE in plan.notes) == (not raw[:cut].endswith(b"\n"))

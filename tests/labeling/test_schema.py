"""Files of a session directory cannot steer the program: a log line with a valid checksum but content
that is not ours, a crafted snapshot, or a FIFO in place of a file gives a clear error, never a
TypeError, a RecursionError or a hang."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from bayesal.exceptions import CorruptStateError, StorageError
from bayesal.labeling.schema import check_event, check_header, depth
from bayesal.labeling.session import Session
from bayesal.labeling.storage import LOG_NAME, STATE_NAME, encode_record, read_log
from bayesal.laplace import HeadConfig, PosteriorOptions

X = (np.random.default_rng(0).normal(size=(40, 3)) + np.eye(3)[np.arange(40) % 3] * 2).astype(np.float32)


@pytest.fixture
def session_dir(tmp_path):
    s = Session(X, ["a", "b", "c"], state_dir=tmp_path / "s", random_state=0, options=PosteriorOptions(head=HeadConfig(epochs=2)),
                candidate_size=None, fsync=False, async_snapshot=False)
    for k, i in enumerate([0, 1, 2, 3]):
        s.tell(i, k % 3)
    s.close()
    return tmp_path / "s"


def _nested(levels):
    value = 1
    for _ in range(levels):
        value = [value]
    return value


def _rewrite(d, edit, drop_state=True):
    recs = read_log(d / LOG_NAME).records
    edit(recs)
    (d / LOG_NAME).write_bytes(b"".join(encode_record(r) for r in recs))  # checksums stay valid
    if drop_state:
        (d / STATE_NAME).unlink()


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda r: r[0]["head"].update(momentum=0.9), "momentum"),
        (lambda r: r[0].update(evil=1), r"unknown header key\(s\) \['evil'\]"),
        (lambda r: r[0].update(seed="0"), "'seed' holds a str"),
        (lambda r: r[0].update(num_items="40"), "'num_items' holds a str"),
        (lambda r: r[0]["head"].update(epochs="many"), "epochs"),
        (lambda r: r[0]["meta"].update(deep=_nested(14)), "nested deeper"),
        (lambda r: r[2].update(label="b"), "'label' holds a str"),
        (lambda r: r[2].update(op="delete_everything"), "unknown op"),
        (lambda r: r[2].update(extra=1), r"unknown key\(s\) \['extra'\]"),
        (lambda r: r[3].update(index=-5), "out of range"),
    ],
)
def test_crafted_log_lines_are_corrupt_state(session_dir, edit, words):
    _rewrite(session_dir, edit)
    with pytest.raises(CorruptStateError, match=words):
        Session.resume(session_dir, X)


def test_deeply_nested_line_is_damage_not_recursion_error(session_dir):
    log = session_dir / LOG_NAME
    body = b'{"op":"tell","seq":5,"index":' + b"[" * 100000 + b"]" * 100000 + b"}"
    import zlib

    with open(log, "ab") as f:
        f.write(b"%08x %s\n" % (zlib.crc32(body) & 0xFFFFFFFF, body))
    with pytest.raises(CorruptStateError):
        Session.resume(session_dir, X)


@pytest.mark.parametrize("name", [LOG_NAME, STATE_NAME])
def test_fifo_in_place_of_a_file_does_not_hang(session_dir, name):
    (session_dir / name).unlink()
    os.mkfifo(session_dir / name)

    def hang(*a):
        raise AssertionError("resume blocked on a FIFO")

    old = signal.signal(signal.SIGALRM, hang)
    signal.alarm(20)
    try:
        with pytest.raises((StorageError, CorruptStateError), match="is a FIFO; replace it by a regular file"):
            Session.resume(session_dir, X)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_schema_helpers():
    assert depth({"a": [1, {"b": [2]}]}) == 4
    assert depth([[[[[]]]]] * 3, limit=2) == 3  # stops just past the limit
    with pytest.raises(CorruptStateError, match="lacks 'num_items'"):
        check_header({"op": "header", "format": 1}, "x")
    assert check_header({"op": "header", "format": 1}, "x", complete=False)
    with pytest.raises(CorruptStateError, match="seq"):
        check_event({"op": "undo", "seq": 3}, 2, "x")
    with pytest.raises(CorruptStateError, match="'index' holds a bool"):
        check_event({"op": "skip", "seq": 1, "index": True}, 1, "x")

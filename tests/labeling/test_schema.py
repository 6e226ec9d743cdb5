"""Files of a session directory cannot steer the program: a log line with a valid checksum but content
that is not ours, a crafted snapshot, or a FIFO in place of a file gives a clear error, never a
TypeError, a RecursionError or a hang."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from bayesal.exceptions import CorruptStateError, InvalidInputError, StorageError
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


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda r: r[0].update(class_names=["a", "a", "c"]), "repeat"),
        (lambda r: r[0].update(class_names=["a" * 1001, "b", "c"]), "longer than 1000 characters"),
    ],
)
def test_class_names_a_new_session_refuses_are_refused_on_resume_too(session_dir, edit, words):
    _rewrite(session_dir, edit)
    with pytest.raises(CorruptStateError, match=words):
        Session.resume(session_dir, X)


@pytest.mark.parametrize("key", ["num_items", "num_features", "feature_hash", "strategy", "head", "gamma"])
@pytest.mark.parametrize("how", ["resume", "recover"])
def test_a_valid_header_without_a_setting_is_a_corrupt_header_not_a_key_error(session_dir, key, how):
    _rewrite(session_dir, lambda r: r[0].pop(key))
    with pytest.raises(CorruptStateError, match=f"lacks '{key}'"):
        getattr(Session, how)(session_dir, X)


def test_an_unknown_strategy_option_in_a_valid_header_is_a_clear_error(session_dir):
    _rewrite(session_dir, lambda r: r[0]["strategy"].update(kwargs={"bogus": 1}))
    with pytest.raises(InvalidInputError, match=r"cannot build.*'bogus'.*pass strategy="):
        Session.resume(session_dir, X)
    Session.resume(session_dir, X, strategy="margin").close()  # another strategy still opens it


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"class_names": ["a" * 1001, "b", "c"]}, "limited to 1000 characters"),
        ({"meta": {"f": object()}}, "meta must hold only JSON values"),
        ({"meta": {"f": float("nan")}}, "meta must hold only JSON values"),
        ({"meta": {"deep": _nested(11)}}, "meta is nested deeper"),
        ({"strategy_kwargs": {"bogus": 1}}, r"cannot be built with the options \['bogus'\]"),
        ({"strategy_kwargs": {"x": object()}}, "the strategy's options must hold only JSON values"),
    ],
)
def test_settings_a_header_cannot_hold_are_refused_when_the_session_is_made(tmp_path, kwargs, words):
    kwargs = {"class_names": ["a", "b", "c"], **kwargs}
    with pytest.raises(InvalidInputError, match=words):
        Session(X, state_dir=tmp_path / "s", fsync=False, **kwargs)
    assert not (tmp_path / "s" / LOG_NAME).exists()

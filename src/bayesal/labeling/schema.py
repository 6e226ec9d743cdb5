"""Schemas of what a session directory stores: the header, the events and the snapshot.

A line of the label log passes its checksum even when someone wrote it by hand, so a checksum alone
cannot keep a file from steering the program. Every record read back is checked here before anything
uses it: known keys only, each of its type and range, sizes and nesting depth bounded. A record that
fails is reported as :class:`~bayesal.exceptions.CorruptStateError` naming the file, the line and the
field. Pure data checks: no posterior, no strategy (the settings' meaning is checked by the session).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from bayesal.exceptions import CorruptStateError

from .policy import RESELECT_SCHEDULES

__all__ = ["MAX_DEPTH", "MAX_CLASSES", "MAX_CLASS_NAME", "check_header", "check_event", "check_snapshot", "depth"]

MAX_DEPTH = 12  # nesting of a header (meta and strategy kwargs are small dicts)
MAX_CLASSES = 100_000
MAX_CLASS_NAME = 1000  # characters of one class name
MAX_INDEX = 2**40
MAX_USER = 200  # characters of the annotator's name on an answer
_NONE = type(None)
_NUM = (int, float)

# key -> (allowed types, required)
_HEADER: dict[str, tuple[tuple[type, ...], bool]] = {
    "op": ((str,), True),
    "seq": ((int,), False),
    "format": ((int,), True),
    "session_id": ((str,), False),
    "created": (_NUM, False),
    "num_items": ((int,), True),
    "num_features": ((int,), True),
    "feature_hash": ((str,), True),
    "class_names": ((list,), True),
    "seed": ((int,), True),
    "strategy": ((dict,), True),
    "posterior": ((dict,), True),
    "head": ((dict,), True),
    "gamma": (_NUM, True),
    "retrain_every": ((int, _NONE), True),
    "reselect": ((dict, _NONE), False),  # absent in headers written before it: no re-selection schedule
    "candidate_size": ((int, _NONE), True),
    "meta": ((dict,), False),
    "cold_start": ((str,), False),  # absent: random picks until two classes are labeled
    "prior_mean": ((list,), False),  # absent: the zero-mean prior; else the (C, D) rows of its mean
    "audit_rate": (_NUM, False),  # absent: no audit stream
}
_EVENT_KEYS: dict[str, dict[str, tuple[type, ...]]] = {
    "tell": {"index": (int,), "label": (int,), "name": (str,), "retrain": (bool,), "was_skipped": (bool,), "user": (str,),
             "audit": (bool,), "audit_pred": (int,), "audit_p": _NUM},
    "correct": {"index": (int,), "label": (int,), "old": (int,), "name": (str,), "user": (str,)},
    "skip": {"index": (int,)},
    "undo": {},
    "redo": {},
    "retrain": {},
}
_EVENT_REQUIRED = {"tell": {"index", "label"}, "correct": {"index", "label", "old"}, "skip": {"index"}}
_SNAPSHOT_KEYS = {"format", "header", "events", "labels", "skipped", "rng", "posterior"}


def depth(obj: Any, limit: int = MAX_DEPTH) -> int:
    """Nesting depth of lists/dicts in ``obj``, counting stops just past ``limit`` (no recursion)."""
    best, stack = 0, [(obj, 0)]
    while stack:
        item, d = stack.pop()
        if isinstance(item, (list, tuple, dict)):
            d += 1
            best = max(best, d)
            if best > limit:
                return best
            stack.extend((v, d) for v in (item.values() if isinstance(item, dict) else item))
    return best


def _is(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # bool is an int to Python, never to a schema
        return bool in types
    return isinstance(value, types)


def _fail(where: str, what: str) -> CorruptStateError:
    return CorruptStateError(f"{where} is corrupt: {what}; it was edited or damaged (Session.recover() can "
                             "rebuild the session from an intact copy)")


def check_header(header: Any, where: str, *, complete: bool = True) -> dict[str, Any]:
    """``header`` if it is a session header of this format: known keys with their types and ranges.

    ``complete=False`` (the files layer, which does not use the settings) lets absent settings pass;
    the session, which builds itself from them, checks with ``complete=True``."""
    if not isinstance(header, dict):
        raise _fail(where, f"the header is a {type(header).__name__}, not an object")
    if depth(header) > MAX_DEPTH:
        raise _fail(where, f"the header is nested deeper than {MAX_DEPTH} levels")
    unknown = sorted(set(header) - set(_HEADER))
    if unknown:
        raise _fail(where, f"unknown header key(s) {unknown[:5]}")
    for key, (types, required) in _HEADER.items():
        if key not in header:
            if required and (complete or key in ("op", "format")):
                raise _fail(where, f"the header lacks {key!r}")
            continue
        if not _is(header[key], types):
            raise _fail(where, f"header field {key!r} holds a {type(header[key]).__name__}")
    if header["op"] != "header":
        raise _fail(where, "the first line is not a header")
    for key in ("num_items", "num_features"):
        if key in header and not 1 <= header[key] <= MAX_INDEX:
            raise _fail(where, f"{key} {header[key]} in the header is out of range")
    names = header.get("class_names", ["0", "1"])  # absent: allowed only with complete=False (checked above)
    if not 2 <= len(names) <= MAX_CLASSES or not all(isinstance(c, str) for c in names):
        raise _fail(where, f"class_names must be 2 to {MAX_CLASSES} strings")
    if not all(len(c) <= MAX_CLASS_NAME for c in names):
        raise _fail(where, f"a class name is longer than {MAX_CLASS_NAME} characters")
    if len(set(names)) != len(names):
        raise _fail(where, "class_names repeat a name")
    if "gamma" in header and (not math.isfinite(header["gamma"]) or header["gamma"] < 0):
        raise _fail(where, f"gamma {header['gamma']!r} is not a finite number >= 0")
    for key in ("retrain_every", "candidate_size"):
        if header.get(key) is not None and header[key] < 1:
            raise _fail(where, f"{key} {header[key]!r} must be >= 1 or null")
    reselect = header.get("reselect")
    if reselect is not None and (reselect.get("schedule") not in RESELECT_SCHEDULES or set(reselect) - {"schedule", "base"}
                                 or not isinstance(reselect.get("base", 1), int) or isinstance(reselect.get("base"), bool)
                                 or reselect.get("base", 1) < 1):
        raise _fail(where, f"the header's reselect {reselect!r} is not a known schedule")
    rate = header.get("audit_rate", 0.0)
    if not (math.isfinite(rate) and 0.0 <= rate < 1.0):
        raise _fail(where, f"the header's audit_rate {rate!r} is not a number in [0, 1)")
    if header.get("cold_start", "random") not in ("random", "cover"):
        raise _fail(where, f"the header's cold_start {header['cold_start']!r} is not known")
    strategy = header.get("strategy", {"name": ""})
    if not isinstance(strategy.get("name"), str) or not isinstance(strategy.get("kwargs", {}), dict):
        raise _fail(where, "the saved strategy has no name or bad kwargs")
    for key in ("posterior", "head"):
        for k, v in header.get(key, {}).items():
            if not isinstance(k, str) or not _is(v, (int, float, str, bool, _NONE)):
                raise _fail(where, f"header field {key!r} holds a non-scalar setting {k!r}")
    return header


def check_event(ev: Any, k: int, where: str) -> dict[str, Any]:
    """``ev`` if it is event number ``k``: a known op with exactly its fields, of their types."""
    if not isinstance(ev, dict):
        raise _fail(where, f"event {k} is a {type(ev).__name__}, not an object")
    op = ev.get("op")
    if op not in _EVENT_KEYS:
        raise _fail(where, f"event {k} has unknown op {op!r}")
    fields = _EVENT_KEYS[op]
    unknown = sorted(set(ev) - set(fields) - {"op", "seq", "t"})
    if unknown:
        raise _fail(where, f"event {k} ({op}) has unknown key(s) {unknown[:5]}")
    missing = sorted(_EVENT_REQUIRED.get(op, set()) - set(ev))
    if missing:
        raise _fail(where, f"event {k} ({op}) lacks {missing}")
    for key, types in fields.items():
        if key in ev and not _is(ev[key], types):
            raise _fail(where, f"event {k} ({op}): {key!r} holds a {type(ev[key]).__name__}")
        if key in ("index", "label", "old") and key in ev and not 0 <= ev[key] <= MAX_INDEX:
            raise _fail(where, f"event {k} ({op}): {key!r} {ev[key]} is out of range")
    if not _is(ev.get("seq"), (int,)) or ev["seq"] != k:
        raise _fail(where, f"event {k} has seq {ev.get('seq')!r}")
    if "user" in ev and len(ev["user"]) > MAX_USER:
        raise _fail(where, f"event {k} ({op}): 'user' is longer than {MAX_USER} characters")
    if "audit_p" in ev and not (math.isfinite(ev["audit_p"]) and 0.0 <= ev["audit_p"] <= 1.0):
        raise _fail(where, f"event {k} ({op}): 'audit_p' {ev['audit_p']!r} is not a probability")
    if "audit_pred" in ev and not 0 <= ev["audit_pred"] <= MAX_INDEX:
        raise _fail(where, f"event {k} ({op}): 'audit_pred' {ev['audit_pred']} is out of range")
    if "t" in ev and not _is(ev["t"], _NUM):
        raise _fail(where, f"event {k} ({op}): 't' holds a {type(ev['t']).__name__}")
    return ev


def check_snapshot(snap: Any, where: str, *, complete: bool = False) -> dict[str, Any]:
    """``snap`` if it is a session snapshot: known keys, a valid header and events, finite tensors."""
    if not isinstance(snap, dict):
        raise _fail(where, "the payload is not a dict")
    unknown = sorted(set(snap) - _SNAPSHOT_KEYS)
    missing = sorted({"header", "events"} - set(snap))
    if unknown or missing:
        raise _fail(where, f"unknown key(s) {unknown[:5]}" if unknown else f"it lacks {missing}")
    check_header(snap["header"], where, complete=complete)
    if not isinstance(snap["events"], list):
        raise _fail(where, "events is not a list")
    for k, ev in enumerate(snap["events"], start=1):
        check_event(ev, k, where)
    if "labels" in snap and not (isinstance(snap["labels"], Mapping)
                                 and all(_is(a, (int,)) and _is(b, (int,)) for a, b in snap["labels"].items())):
        raise _fail(where, "labels must map indices to classes")
    if "skipped" in snap and not (isinstance(snap["skipped"], list) and all(_is(i, (int,)) for i in snap["skipped"])):
        raise _fail(where, "skipped must be a list of indices")
    post = snap.get("posterior")
    if post is not None:
        if not isinstance(post, dict):
            raise _fail(where, "the posterior is not a dict")
        for key, t in post.items():  # its structure is checked where it is rebuilt; values must be finite
            if isinstance(t, torch.Tensor) and (not t.is_floating_point() or not bool(torch.isfinite(t).all())):
                raise _fail(where, f"the posterior's {key!r} is not a finite float tensor")
    return snap

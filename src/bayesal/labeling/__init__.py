"""Labeling by a person: a crash-safe :class:`Session` with instant Bayesian updates.

:class:`Session` is the facade: ``session`` (construction and the write path of its actions) with its
parts ``views`` (what it holds, read-only), ``queries`` (what to label next, the predictive, the
stopping signals), ``review`` (which given labels the model doubts) and ``opening`` (from a dataset, resume, recover). Behind it, one module per job:
``engine`` (the labeling engine: the write path of an event, the resume of a log, the posterior
arithmetic of events — shared with the Label Studio backend), ``config`` (the saved header),
``history`` (labels, undo/redo bookkeeping), ``state`` (events → posterior, undo cache), ``replay``
(the posterior of a history), ``signals`` (stopping signals), ``store`` (the locked state directory,
:class:`StorageOptions`), ``recovery`` (which copy of the events to trust) and ``storage`` (file
formats).

Other packages use the names exported here only.
"""

from .engine import EventFold, LabelingEngine, PosteriorFold, log_header, logged_records, resolve_seed
from .exports import (
    EXPORT_COLUMNS,
    STOP_NAME,
    format_labels,
    label_rows,
    logged_history,
    model_payload,
    stop_fields,
    stop_summary,
)
from .queries import QueryView
from .recovery import read_session_header
from .session import Session
from .storage import LOG_NAME
from .store import LogFiles, SessionStore, SnapshotWarning, StorageOptions

__all__ = [
    "Session", "StorageOptions", "LabelingEngine", "EventFold", "PosteriorFold", "SessionStore", "LogFiles",
    "log_header", "logged_records", "resolve_seed", "read_session_header", "SnapshotWarning", "QueryView",
    "EXPORT_COLUMNS", "label_rows", "format_labels", "LOG_NAME", "logged_history", "model_payload",
    "STOP_NAME", "stop_fields", "stop_summary",
]

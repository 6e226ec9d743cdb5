"""The labels of a session as rows to export: item, label, who gave it and when.

:func:`label_rows` reads the effective action history (after undo/redo) and gives one row per labeled
item, in labeling order, with the label's latest answer (a correction replaces the first answer, its
annotator and time); :func:`write_labels` writes rows as CSV or JSON lines. Used by the web app's
export and by ``bayesal export``, which reads a session's log without opening the session.
:func:`stop_summary` is the accuracy estimate and the stop recommendation as ``stop.json`` (the web
app's export and the file ``bayesal label`` leaves in the session directory).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from bayesal.exceptions import CorruptStateError

from .history import LabelBook
from .recovery import read_session_header
from .storage import LOG_NAME, read_log

__all__ = ["EXPORT_COLUMNS", "STOP_NAME", "label_rows", "format_labels", "logged_history", "model_payload",
           "stop_fields", "stop_summary"]

#: The file the estimate and the stop recommendation are exported to.
STOP_NAME = "stop.json"

EXPORT_COLUMNS = ["index", "label", "label_index", "item", "id", "annotator", "time", "label_doubt"]


def _iso(t: Any) -> str:
    if not isinstance(t, (int, float)):
        return ""
    return datetime.fromtimestamp(float(t), tz=timezone.utc).isoformat(timespec="seconds")


def label_rows(history: Sequence[Mapping[str, Any]], class_names: Sequence[str], *,
               ids: Sequence[str] | None = None, items: Sequence[str] | None = None,
               doubt: Mapping[int, float] | None = None) -> list[dict[str, Any]]:
    """One row per labeled item of an effective action ``history``.

    Parameters
    ----------
    history
        Effective actions (``Session.history``), oldest first.
    class_names
        The ``C`` class names.
    ids, items
        Per pool position: the item's id and its text or file path (optional).
    doubt
        Per labeled position: how much the model doubts the given label (``Session.label_doubt()``;
        optional — ``bayesal export`` reads the log without a model and leaves it empty).

    Returns
    -------
    list of dict
        ``index``, ``label``, ``label_index``, ``id``, ``item`` (``""`` where unknown), ``annotator``
        and ``time`` (ISO 8601, UTC) of the latest answer and ``label_doubt`` (``""`` where not given),
        in the order the items were first labeled.
    """
    rows: dict[int, dict[str, Any]] = {}
    for action in history:
        if action.get("op") not in ("tell", "correct"):
            continue
        i, c = int(action["index"]), int(action["label"])
        row = rows.setdefault(i, {"index": i})
        row.update(label=class_names[c], label_index=c, annotator=str(action.get("user", "")), time=_iso(action.get("t")))
        row["id"] = ids[i] if ids is not None and i < len(ids) else str(i)
        row["item"] = items[i] if items is not None and i < len(items) and isinstance(items[i], str) else ""
    for i, row in rows.items():
        row["label_doubt"] = round(float(doubt[i]), 6) if doubt is not None and i in doubt else ""
    return list(rows.values())


def format_labels(rows: Sequence[Mapping[str, Any]], fmt: str = "csv") -> str:
    """``rows`` of :func:`label_rows` as CSV (header :data:`EXPORT_COLUMNS`) or JSON lines (``"jsonl"``)."""
    if fmt == "jsonl":
        return "".join(json.dumps({k: r[k] for k in EXPORT_COLUMNS if k in r}, ensure_ascii=False) + "\n" for r in rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=EXPORT_COLUMNS, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in EXPORT_COLUMNS})
    return buf.getvalue()


def logged_history(state_dir: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(header, effective action history)`` of the session in ``state_dir``, read from its label log
    without opening (locking) the session, so it works while a server holds it (a torn last line is
    left out, as a resume would)."""
    path = Path(state_dir)
    header = read_session_header(path)
    records = read_log(path / LOG_NAME).records if (path / LOG_NAME).exists() else []
    book = LabelBook(header["class_names"], int(header["num_items"]))
    for k, ev in enumerate(records[1:]):
        try:
            book.fold(ev)
        except ValueError as err:
            raise CorruptStateError(f"event {k} of {path / LOG_NAME} does not apply ({err}); "
                                    f"run bayesal label --resume {path} --recover") from err
    return header, [dict(a) for a in book.history]


def model_payload(session: Any) -> dict[str, Any]:
    """What a saved model holds: the posterior's ``state_dict``, the class names, the number of labels
    and the session's configuration (whose ``meta`` names the items' backbone and its preprocessing)."""
    return {
        "posterior": session.posterior.state_dict(),
        "class_names": list(session.class_names),
        "n_labeled": int(session.n_labeled),
        "config": session.config,
    }


def stop_fields(estimate: Mapping[str, Any]) -> dict[str, Any]:
    """``Session.estimate()`` as JSON-ready values: floats rounded, NaN as None."""
    def clean(v: Any) -> Any:
        if isinstance(v, float):
            return round(v, 6) if math.isfinite(v) else None
        return v
    return {k: clean(v) for k, v in estimate.items()}


def stop_summary(session: Any) -> str:
    """The JSON text of ``stop.json``: the session's :meth:`~bayesal.labeling.session.Session.estimate`
    (:func:`stop_fields`) with the time it was made; ``estimate`` is null while fewer than two classes
    are labeled (no model to estimate yet)."""
    ready = len(set(session.labels.values())) >= 2
    body = {"time": datetime.now(tz=timezone.utc).isoformat(timespec="seconds"),
            "estimate": stop_fields(session.estimate()) if ready else None}
    return json.dumps(body, indent=2) + "\n"

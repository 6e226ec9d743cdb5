"""The labels of a session as rows to export: item, label, who gave it and when.

:func:`label_rows` reads the effective action history (after undo/redo) and gives one row per labeled
item, in labeling order, with the label's latest answer (a correction replaces the first answer, its
annotator and time); :func:`write_labels` writes rows as CSV or JSON lines. Used by the web app's
export and by ``bayesal export``, which reads a session's log without opening the session.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

__all__ = ["EXPORT_COLUMNS", "label_rows", "format_labels"]

EXPORT_COLUMNS = ["index", "label", "label_index", "item", "id", "annotator", "time"]


def _iso(t: Any) -> str:
    if not isinstance(t, (int, float)):
        return ""
    return datetime.fromtimestamp(float(t), tz=timezone.utc).isoformat(timespec="seconds")


def label_rows(history: Sequence[Mapping[str, Any]], class_names: Sequence[str], *,
               ids: Sequence[str] | None = None, items: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One row per labeled item of an effective action ``history``.

    Parameters
    ----------
    history
        Effective actions (``Session.history``), oldest first.
    class_names
        The ``C`` class names.
    ids, items
        Per pool position: the item's id and its text or file path (optional).

    Returns
    -------
    list of dict
        ``index``, ``label``, ``label_index``, ``id``, ``item`` (``""`` where unknown), ``annotator``
        and ``time`` (ISO 8601, UTC) of the latest answer, in the order the items were first labeled.
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

"""The Review view of the web app: labeled items whose given label the model doubts, most doubted first.

Each card shows the item, its given label and the model's view of it *without* that label (the
leave-one-out predictive, :meth:`Session.suspicious <bayesal.labeling.session.Session.suspicious>`).
The reviewer keeps the label (one key) or corrects it with a class key — a correction is the session's
``correct`` event, through :meth:`LabelingService.correct <bayesal.serve.service.LabelingService.correct>`.
A kept label — and a corrected one, which the page then keeps — is not shown again while the server
runs (kept labels are not events: the label log is unchanged, and a restarted server asks about them
again if the model still doubts them).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from bayesal.exceptions import StaleAnswerError

from .guess import model_guess
from .service import LabelingService

__all__ = ["LabelReview", "KeepBody", "add_review_routes"]


class LabelReview:
    """The review queue over a :class:`LabelingService` (its lock serialises it with the answers)."""

    def __init__(self, service: LabelingService) -> None:
        self.service = service
        self.kept: set[int] = set()

    def _card(self) -> dict[str, Any]:
        svc = self.service
        session = svc.session
        base = {"version": svc._version, "n_labeled": session.n_labeled, "n_kept": len(self.kept & set(session.labels))}
        top = session.suspicious(1, exclude=self.kept)
        if not top:
            return {**base, "index": None, "done": True}
        row = top[0]
        guess = model_guess(row["probs"], max(0, session.n_labeled - 1))
        names = session.class_names
        return {
            **base,
            "index": row["index"],
            "done": False,
            "item": svc._item_view(row["index"]),
            "label": row["label"],
            "doubt": round(row["doubt"], 4),
            "top": [{"label": names[c], "p": round(p, 4)} for c, p in guess.top],
            "guess": [names[c] for c in guess.best],
        }

    def next_item(self) -> dict[str, Any]:
        """The most doubted label not kept yet (``done`` when there is none)."""
        with self.service._lock:
            return self._card()

    def keep(self, index: int) -> dict[str, Any]:
        """Keep the label of ``index`` as it is; the response holds the next card."""
        with self.service._lock:
            i = self.service._check_index(index)
            if i not in self.service.session.labels:
                raise StaleAnswerError(f"item #{i} is not labeled (any more); nothing to keep")
            self.kept.add(i)
            return {"kept": i, "next": self._card()}


class KeepBody(BaseModel):
    """``{"index": i}``: the labeled item whose label is kept."""

    model_config = ConfigDict(extra="forbid")
    index: StrictInt = Field(ge=0)


def add_review_routes(app: FastAPI, review: LabelReview) -> None:
    """``GET /api/review/next`` and ``POST /api/review/keep`` (body ``{"index": i}``); corrections use
    ``POST /api/correct``."""

    @app.get("/api/review/next")
    def review_next() -> dict[str, Any]:
        return review.next_item()

    @app.post("/api/review/keep")
    def review_keep(body: KeepBody) -> dict[str, Any]:
        return review.keep(body.index)

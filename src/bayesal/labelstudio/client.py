"""A small client of Label Studio's REST API: the calls the prediction pusher makes.

Standard library only (``urllib``): the ``label-studio-sdk`` pins its own versions of pydantic and httpx.
Authentication is Label Studio's API token (``Authorization: Token <token>``; Account & Settings →
Access Token, or a legacy token, in Label Studio 1.23).

=====================================================  ===============================================
``GET    /api/tasks?project=P&page=N&page_size=S``     the project's tasks (``id``, ``data``), paged
``POST   /api/projects/P/import/predictions``          many predictions in one request (``{task, result,
                                                       score, model_version}``)
``GET    /api/predictions/?project=P``                 the project's predictions (``id``, ``task``,
                                                       ``model_version``, ``score``)
``PATCH  /api/predictions/<id>/``                      one prediction's ``score`` and ``result``
``DELETE /api/predictions/<id>/``                      one prediction
``GET    /api/ml?project=P``                           the project's ML backends and their model version
``PATCH  /api/ml/<id>``                                an ML backend's ``model_version``, ``auto_update``
=====================================================  ===============================================

Label Studio 1.23 deletes predictions one at a time inside one database transaction (about 20 ms
each, with its per-prediction counters): deleting a whole model version of 1,000 predictions locks
its SQLite database for half a minute, and annotations submitted meanwhile fail. This client
therefore only deletes single predictions.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from bayesal.exceptions import BayesalError, InvalidInputError

__all__ = ["LabelStudioClient", "LabelStudioAPIError"]

#: Tasks per page when listing a project's tasks.
PAGE_SIZE = 1000


class LabelStudioAPIError(BayesalError, RuntimeError):
    """Label Studio could not be reached or refused a call; ``status`` is the HTTP status (None when no
    answer came)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class LabelStudioClient:
    """Label Studio's REST API at ``url`` (e.g. ``http://localhost:8080``) with the API ``token``.

    ``timeout``: seconds per request. Every failure raises :class:`LabelStudioAPIError` naming the
    call and what Label Studio answered.
    """

    def __init__(self, url: str, token: str, *, timeout: float = 30.0) -> None:
        parsed = urllib.parse.urlsplit(url or "")
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise InvalidInputError(f"--label-studio-url must be Label Studio's http(s) address, e.g. "
                                    f"http://localhost:8080; got {url!r}")
        if not token or not token.strip() or any(c.isspace() for c in token.strip()):
            raise InvalidInputError("--label-studio-token must be Label Studio's API token (Account & Settings → "
                                    "Access Token), without spaces")
        self.url = url.rstrip("/")
        self.timeout = float(timeout)
        self._headers = {"Authorization": f"Token {token.strip()}", "Accept": "application/json"}

    # ------------------------------------------------------------------ transport
    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None, body: Any = None) -> Any:
        """One call; the decoded JSON answer (None for an empty one)."""
        url = self.url + path + ("?" + urllib.parse.urlencode(params) if params else "")
        data = None
        headers = dict(self._headers)
        if body is not None:
            data = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        what = f"{method} {path}"
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 - http(s) checked above
                raw = resp.read()
        except urllib.error.HTTPError as err:
            detail = err.read()[:300].decode("utf-8", "replace").strip()
            hint = " (is --label-studio-token a valid API token of a user of this project?)" if err.code in (401, 403) else ""
            raise LabelStudioAPIError(f"Label Studio refused {what}: HTTP {err.code} {detail}{hint}", err.code) from err
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            reason = getattr(err, "reason", err)
            raise LabelStudioAPIError(f"Label Studio at {self.url} did not answer {what}: {reason}") from err
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError as err:
            raise LabelStudioAPIError(f"Label Studio answered {what} with something other than JSON: "
                                      f"{raw[:100]!r}") from err

    # ------------------------------------------------------------------ calls
    def tasks(self, project: int) -> list[dict[str, Any]]:
        """Every task of ``project`` as ``{"id", "data"}``, in Label Studio's order (file references as
        imported, not resolved to URLs: what ``/predict`` receives)."""
        out: list[dict[str, Any]] = []
        page = 1
        while True:
            answer = self.request("GET", "/api/tasks", params={"project": project, "page": page, "page_size": PAGE_SIZE,
                                                                 "resolve_uri": 0})
            batch = answer.get("tasks") if isinstance(answer, dict) else answer
            if not isinstance(batch, list):
                raise LabelStudioAPIError(f"Label Studio's task list of project {project} is not a list")
            out.extend({"id": t["id"], "data": t.get("data") or {}} for t in batch if isinstance(t, dict) and "id" in t)
            total = answer.get("total") if isinstance(answer, dict) else None
            if len(batch) < PAGE_SIZE or (isinstance(total, int) and len(out) >= total):
                return out
            page += 1

    def import_predictions(self, project: int, predictions: list[dict[str, Any]]) -> int:
        """Create ``predictions`` (``{task, result, score, model_version}``) in one call; how many were made."""
        answer = self.request("POST", f"/api/projects/{project}/import/predictions", body=predictions)
        return int(answer.get("created", len(predictions))) if isinstance(answer, dict) else len(predictions)

    def predictions(self, project: int) -> list[dict[str, Any]]:
        """Every prediction of ``project`` (Label Studio does not page this list)."""
        answer = self.request("GET", "/api/predictions/", params={"project": project})
        return [p for p in answer if isinstance(p, dict)] if isinstance(answer, list) else []

    def update_prediction(self, prediction: int, changes: dict[str, Any]) -> None:
        self.request("PATCH", f"/api/predictions/{prediction}/", body=changes)

    def delete_prediction(self, prediction: int) -> None:
        self.request("DELETE", f"/api/predictions/{prediction}/")

    def ml_backends(self, project: int) -> list[dict[str, Any]]:
        answer = self.request("GET", "/api/ml", params={"project": project})
        return [m for m in answer if isinstance(m, dict)] if isinstance(answer, list) else []

    def update_ml_backend(self, ml_backend: int, changes: dict[str, Any]) -> dict[str, Any]:
        """Change an ML backend's settings (Label Studio then asks the backend for its state)."""
        answer = self.request("PATCH", f"/api/ml/{ml_backend}", body=changes)
        return answer if isinstance(answer, dict) else {}

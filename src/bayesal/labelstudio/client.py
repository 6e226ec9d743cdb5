"""A small client of Label Studio's REST API: the calls the prediction pusher makes.

Standard library only (``urllib``): the ``label-studio-sdk`` pins its own versions of pydantic and httpx.
Authentication is Label Studio's API token (``Authorization: Token <token>``; Account & Settings →
Access Token, or a legacy token, in Label Studio 1.23).

=====================================================  ===============================================
``GET    /api/tasks?project=P&page=N&page_size=S``     the project's tasks (``id``, ``data``), paged
``POST   /api/projects/P/import/predictions``          many predictions in one request (``{task, result,
                                                       score, model_version}``)
``GET    /api/ml?project=P``                           the project's ML backends and their model version
``GET    /api/ml/M``                                   Label Studio asks the backend for its model version
                                                       (``/setup``) and records it
``GET    /api/projects/P/model-versions/``             ``{model_version: number of predictions}``
``DELETE /api/projects/P/model-versions/``             every prediction of one ``model_version``
=====================================================  ===============================================
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

    def ml_backends(self, project: int) -> list[dict[str, Any]]:
        answer = self.request("GET", "/api/ml", params={"project": project})
        return [m for m in answer if isinstance(m, dict)] if isinstance(answer, list) else []

    def refresh_ml_backend(self, ml_backend: int) -> dict[str, Any]:
        """Label Studio asks the ML backend for its state and model version and records them."""
        answer = self.request("GET", f"/api/ml/{ml_backend}")
        return answer if isinstance(answer, dict) else {}

    def model_versions(self, project: int) -> dict[str, int]:
        """``{model_version: number of predictions}`` of ``project``."""
        answer = self.request("GET", f"/api/projects/{project}/model-versions/")
        return {str(k): int(v or 0) for k, v in answer.items()} if isinstance(answer, dict) else {}

    def delete_model_version(self, project: int, model_version: str) -> int:
        """Delete every prediction of ``model_version`` in ``project``; how many were deleted."""
        answer = self.request("DELETE", f"/api/projects/{project}/model-versions/", body={"model_version": model_version})
        return int(answer.get("deleted_predictions", 0)) if isinstance(answer, dict) else 0

"""FastAPI app of ``bayesal serve``: one HTML page (inline CSS and JS, no external asset) and a JSON API.

Security model
--------------
* The server binds 127.0.0.1 unless told otherwise; on any other address a token is required
  (:func:`check_bind`).
* Every API request must carry the ``X-Bayesal-Token`` header (the page's script adds it to each
  ``fetch``). With a token configured its value must match; without one its mere presence is required:
  a cross-site page cannot add a custom header without a CORS preflight, which this app never grants,
  so forged (CSRF) requests fail. The page itself (``GET /``) accepts the token as ``?token=`` so that
  the printed URL can be opened; the script then keeps it in ``sessionStorage`` and drops it from the
  address bar. No cookie is used. Thumbnails (``GET /thumbs/<content key>/<index>.png``, loaded by
  ``<img>``, which sends no header) take the token the same way; they are reads without effect on the
  session, cached by the browser under their content-keyed address.
* Without a token only ``localhost`` / loopback ``Host`` headers are served (against DNS rebinding).
* Request bodies are pydantic models that forbid unknown fields; labels must be known class names;
  nothing in a request names a file or path — exports have fixed names, thumbnails are named by the
  item's pool index.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
from importlib.resources import files
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.concurrency import run_in_threadpool

from bayesal.exceptions import BayesalError, InvalidInputError, StaleAnswerError, StorageError
from bayesal.utils import summarize_validation_errors

from .review import LabelReview, add_review_routes
from .service import LabelingService
from .thumbs import NotFoundError

__all__ = ["create_app", "check_bind", "is_loopback", "TOKEN_HEADER", "CLIENT_HEADER"]

TOKEN_HEADER = "X-Bayesal-Token"
CLIENT_HEADER = "X-Bayesal-Client"
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}
#: A thumbnail's address names its content: the browser may keep it for a year without asking again.
THUMB_CACHE_CONTROL = "private, max-age=31536000, immutable"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP addresses (``127.0.0.0/8``, ``::1``)."""
    if host.strip("[]") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> str | None:
    """The token to require when binding ``host``: ``token``, or a new random one off loopback."""
    if token is not None and len(token) < 8:
        raise InvalidInputError("--token must be at least 8 characters long; leave it out to get a random one")
    if token is None and not is_loopback(host):
        return secrets.token_urlsafe(18)
    return token


# ------------------------------------------------------------------------------------ request bodies
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AnswerBody(_Body):
    index: StrictInt = Field(ge=0)
    label: str = Field(min_length=1, max_length=256)


class IndexBody(_Body):
    index: StrictInt = Field(ge=0)


class UndoBody(_Body):
    expect_index: StrictInt | None = None


class EmptyBody(_Body):
    pass


class ClassBody(_Body):
    label: str = Field(min_length=1, max_length=256)


# ------------------------------------------------------------------------------------ the app
def _asset(name: str) -> str:
    return (files("bayesal.serve") / "static" / name).read_text(encoding="utf-8")


def _host_name(host_header: str) -> str:
    if host_header.startswith("["):
        return host_header.split("]")[0] + "]"
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def create_app(service: LabelingService, *, token: str | None = None) -> FastAPI:
    """The web app over ``service``; ``token``: the secret every request must carry (None: none)."""
    app = FastAPI(title="bayesal serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    page_template = _asset("index.html").replace("{{CSS}}", _asset("app.css")).replace("{{JS}}", _asset("app.js"))
    page_template = page_template.replace("{{REVIEW_JS}}", _asset("review.js"))

    def denied(request: Request, why: str) -> Response:
        if request.url.path == "/" and request.method == "GET":
            return HTMLResponse(
                "<!doctype html><title>bayesal serve: token needed</title><p>" + why
                + " Open the address printed by <code>bayesal serve</code> (it ends in <code>?token=…</code>).</p>",
                status_code=401,
            )
        return JSONResponse({"detail": why}, status_code=401)

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        if token is None and _host_name(request.headers.get("host", "")) not in _LOCAL_HOSTS:
            return JSONResponse({"detail": "this server answers only on localhost"}, status_code=403)
        sent = request.headers.get(TOKEN_HEADER)
        # the page and its images are loaded by the browser itself, which adds no header: the token may
        # come as ?token= (a thumbnail is a read without side effect; cross-site pages cannot read it)
        if sent is None and request.method == "GET" and (request.url.path == "/" or _is_thumb(request.url.path)):
            sent = request.query_params.get("token", "" if token is None else None)
        if sent is None:
            return denied(request, f"missing {TOKEN_HEADER} header.")
        if token is not None and not hmac.compare_digest(sent.encode(), token.encode()):
            return denied(request, "wrong token.")
        response = await call_next(request)
        if "Cache-Control" not in response.headers:  # only thumbnails are cached (immutable: keyed by content)
            response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        return response

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, err: RequestValidationError) -> JSONResponse:
        # the default handler echoes the offending input back, and a NaN, an infinity or a lone
        # surrogate in it cannot be written as JSON (a 500 instead of a 422): name the fields only
        return JSONResponse({"detail": "invalid request body: " + summarize_validation_errors(err.errors())}, status_code=422)

    @app.exception_handler(InvalidInputError)
    async def invalid(request: Request, err: InvalidInputError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=422)

    @app.exception_handler(StaleAnswerError)
    async def stale(request: Request, err: StaleAnswerError) -> JSONResponse:
        body: dict[str, Any] = {"detail": str(err), "stale": True}
        try:  # off the event loop: the service may be busy with another answer
            body["next"] = await run_in_threadpool(service.next_item, request.headers.get(CLIENT_HEADER))
        except InvalidInputError:
            pass
        return JSONResponse(body, status_code=409)

    @app.exception_handler(StorageError)
    async def not_saved(request: Request, err: StorageError) -> JSONResponse:
        # the session's own message speaks to a Python caller (Session.resume()); a browser user is told
        # what happened and what to do here
        return JSONResponse({"detail": _storage_message(err)}, status_code=503)

    @app.exception_handler(BayesalError)
    async def unavailable(request: Request, err: BayesalError) -> JSONResponse:
        # e.g. the label log cannot be written (disk full) or the session was closed: nothing was recorded
        return JSONResponse({"detail": f"{err} (nothing was recorded)"}, status_code=503)

    def client(request: Request) -> str | None:
        return request.headers.get(CLIENT_HEADER)

    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        nonce = secrets.token_urlsafe(16)
        html = page_template.replace("{{NONCE}}", nonce).replace("{{TITLE}}", _escape(service.name))
        csp = (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; img-src 'self' data:; "
               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
        return HTMLResponse(html, headers={"Content-Security-Policy": csp})

    @app.get("/api/info")
    def info() -> dict[str, Any]:
        return service.info()

    @app.get("/api/next")
    def next_item(request: Request) -> dict[str, Any]:
        return service.next_item(client(request))

    @app.post("/api/answer")
    def answer(body: AnswerBody, request: Request) -> dict[str, Any]:
        return service.answer(body.index, body.label, client(request))

    @app.post("/api/skip")
    def skip(body: IndexBody, request: Request) -> dict[str, Any]:
        return service.skip(body.index, client(request))

    @app.post("/api/correct")
    def correct(body: AnswerBody, request: Request) -> dict[str, Any]:
        return service.correct(body.index, body.label, client(request))

    @app.post("/api/undo")
    def undo(body: UndoBody, request: Request) -> dict[str, Any]:
        return service.undo(client(request), expect_index=body.expect_index)

    @app.post("/api/redo")
    def redo(body: EmptyBody, request: Request) -> dict[str, Any]:
        return service.redo(client(request))

    @app.post("/api/classes")
    def add_class(body: ClassBody, request: Request) -> dict[str, Any]:
        return service.add_class(body.label, client(request))

    @app.post("/api/retrain")
    def retrain(body: EmptyBody, request: Request) -> dict[str, Any]:
        return service.retrain(client(request))

    @app.get("/api/upcoming")
    def upcoming(request: Request) -> dict[str, Any]:
        return {"thumbnails": service.upcoming(client(request))}

    @app.get("/api/panel")
    def panel() -> dict[str, Any]:
        return {"stats": service.stats(), "recent": service.recent()}

    @app.get("/api/export/labels.csv")
    def export_csv() -> PlainTextResponse:
        return PlainTextResponse(service.export_csv(), media_type="text/csv",
                                 headers={"Content-Disposition": 'attachment; filename="labels.csv"'})

    @app.get("/api/export/labels.jsonl")
    def export_jsonl() -> PlainTextResponse:
        return PlainTextResponse(service.export_jsonl(), media_type="application/x-ndjson",
                                 headers={"Content-Disposition": 'attachment; filename="labels.jsonl"'})

    @app.get("/api/export/stop.json")
    def export_stop() -> PlainTextResponse:
        return PlainTextResponse(service.export_stop(), media_type="application/json",
                                 headers={"Content-Disposition": 'attachment; filename="stop.json"'})

    @app.get("/api/export/posterior.pt")
    def export_posterior() -> Response:
        return Response(service.export_posterior(), media_type="application/octet-stream",
                        headers={"Content-Disposition": 'attachment; filename="posterior.pt"'})

    @app.get("/thumbs/{key}/{name}")
    def thumbnail(key: str, name: str, request: Request) -> Response:
        # an image item's thumbnail file: made once, immutable under its content-keyed address, so the
        # browser keeps it (and revalidates it by ETag at most)
        stem, dot, ext = name.partition(".")
        if ext != "png" or not stem.isdigit() or len(stem) > 12:
            return JSONResponse({"detail": "no such thumbnail"}, status_code=404)
        try:
            data = service.thumbnail(key, int(stem))
        except NotFoundError as err:
            return JSONResponse({"detail": str(err)}, status_code=404)
        etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
        headers = {"ETag": etag, "Cache-Control": THUMB_CACHE_CONTROL}
        if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
            return Response(status_code=304, headers=headers)
        return Response(data, media_type="image/png", headers=headers)

    add_review_routes(app, LabelReview(service))
    return app


def _is_thumb(path: str) -> bool:
    return path.startswith("/thumbs/")


def _storage_message(err: StorageError) -> str:
    """What a browser user is told when the session's files cannot be written."""
    code: int | None = None
    cause: BaseException | None = err
    while cause is not None and code is None:
        code = getattr(cause, "errno", None)
        cause = cause.__cause__
    reason = os.strerror(code) if code else "the session is closed or its files cannot be written"
    return (f"could not save: {reason}; nothing was recorded. Answer again once the problem is fixed (e.g. "
            "free disk space); if it keeps failing, stop bayesal serve and start it again with --resume: "
            "every answer acknowledged so far is saved")



def _escape(text: str) -> str:
    import html

    return html.escape(text, quote=True)

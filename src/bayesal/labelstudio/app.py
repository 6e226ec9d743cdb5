"""The HTTP API Label Studio 1.23 calls on an ML backend, as a FastAPI app.

Routes (Label Studio's ``ml/api_connector.py`` names them; bodies are JSON):

========================  =====================================================================
``GET  /``, ``/health``   ``{"status": "UP", ...}`` — Label Studio's health check (1 s timeout); with a
                          prediction pusher, ``"push"``: its status (last push, last error)
``POST /setup``           ``{project, schema, hostname, access_token, extra_params}`` →
                          ``{"model_version"}``; called on connect and before every prediction run
``POST /predict``         ``{tasks, project, label_config, params}`` →
                          ``{"results": [{result, score, model_version}], "model_version"}``
``POST /webhook``         Label Studio's webhook payload ``{action, project, annotation, task, ...}``
``POST /train``           ``{annotations: [tasks with annotations], project, label_config}``
``GET  /versions``        ``{"versions": [model_version]}``
``GET  /metrics``         ``{}``
========================  =====================================================================

Errors bayesal raises on purpose (:class:`~bayesal.exceptions.BayesalError`) become HTTP 400 with
``{"error": message}`` — Label Studio shows ``error`` to the user. With ``basic_auth`` set, every
route but the health check needs that user and password (Label Studio's "Basic Authentication" of
an ML backend).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from bayesal.exceptions import BayesalError, StorageError
from bayesal.utils import describe_os_error, summarize_validation_errors

from .backend import LabelStudioBackend
from .push import PredictionPusher

__all__ = ["create_app"]


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class SetupRequest(_Body):
    project: StrictInt | StrictStr
    label_config: str = Field(alias="schema")
    hostname: str | None = None
    access_token: str | None = None
    extra_params: Any = None


class PredictRequest(_Body):
    tasks: list[dict[str, Any]]
    project: StrictInt | StrictStr
    label_config: str | None = None
    params: dict[str, Any] | None = None


class TrainRequest(_Body):
    annotations: list[dict[str, Any]]
    project: StrictInt | StrictStr
    label_config: str | None = None


class WebhookRequest(_Body):
    action: str
    project: dict[str, Any] | None = None


def _check_basic_auth(header: str | None, expected: tuple[str, str]) -> bool:
    if not header or not header.startswith("Basic "):
        return False
    try:
        user, _, password = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return hmac.compare_digest(user, expected[0]) & hmac.compare_digest(password, expected[1])


def _printable(text: str) -> str:
    """``text`` with lone surrogates escaped (JSON, as UTF-8, cannot carry them)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")



def create_app(backend: LabelStudioBackend, *, basic_auth: tuple[str, str] | None = None,
               pusher: PredictionPusher | None = None) -> FastAPI:
    """The FastAPI app serving ``backend``; the backend's files are closed when the app shuts down.
    ``pusher`` (pushing ``backend``'s predictions into Label Studio) runs while the app does."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if pusher is not None:
            pusher.start()
        yield
        if pusher is not None:
            await run_in_threadpool(pusher.close)
        backend.close()

    app = FastAPI(title="bayesal Label Studio ML backend", lifespan=lifespan, docs_url=None, redoc_url=None)

    @app.exception_handler(BayesalError)
    async def _bayesal_error(request: Request, exc: BayesalError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"error": _printable(str(exc))})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI's own refusals (a body that is not JSON, an unknown route) in the shape Label Studio shows
        return JSONResponse(status_code=exc.status_code, content={"error": _printable(str(exc.detail))},
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _malformed(request: Request, exc: RequestValidationError) -> JSONResponse:
        # named fields only: echoing the input back fails for a NaN or a lone surrogate (a 500)
        return JSONResponse(status_code=422, content={"error": "invalid request body: " + summarize_validation_errors(exc.errors())})

    @app.exception_handler(StorageError)
    @app.exception_handler(OSError)
    async def _storage(request: Request, exc: OSError) -> JSONResponse:
        # a full disk or an unwritable state folder (the label log, the feature cache): nothing was changed
        # that a retry would not redo; StorageError says what failed, a raw OSError only why
        what = str(exc) if isinstance(exc, StorageError) else f"could not read or write the backend's files: {describe_os_error(exc)}"
        return JSONResponse(status_code=503, content={"error": _printable(what)})

    if basic_auth is not None:

        @app.middleware("http")
        async def _auth(request: Request, call_next):
            if request.url.path not in ("/", "/health") and not _check_basic_auth(
                request.headers.get("authorization"), basic_auth
            ):
                return JSONResponse(
                    status_code=401, content={"error": "this bayesal backend needs Basic authentication"},
                    headers={"WWW-Authenticate": 'Basic realm="bayesal"'},
                )
            return await call_next(request)

    # Handlers are plain functions: FastAPI runs them in its thread pool, so a long model call never
    # blocks the health check; the backend serialises per project.
    @app.get("/")
    @app.get("/health")
    def health() -> dict[str, Any]:
        out: dict[str, Any] = {"status": "UP", "model_class": "bayesal", "strategy": backend.settings.strategy}
        if pusher is not None:
            out["push"] = pusher.status()
        return out

    @app.post("/setup")
    def setup(body: SetupRequest) -> dict[str, Any]:
        return {"model_version": backend.setup(body.project, body.label_config)}

    @app.post("/predict")
    def predict(body: PredictRequest) -> dict[str, Any]:
        results, version = backend.predict(body.tasks, body.project, body.label_config)
        return {"results": results, "model_version": version}

    @app.post("/webhook", status_code=201)
    def webhook(body: WebhookRequest) -> dict[str, Any]:
        return backend.webhook(body.model_dump(by_alias=True))

    @app.post("/train", status_code=201)
    def train(body: TrainRequest) -> dict[str, Any]:
        return {"model_version": backend.train(body.annotations, body.project, body.label_config)}

    @app.get("/versions")
    async def versions(request: Request) -> dict[str, Any]:
        # Label Studio 1.23 sends no body with this GET (its client drops it): without a project, the
        # versions of every open project
        try:
            data = await request.json()
        except ValueError:
            data = {}
        project = data.get("project") if isinstance(data, dict) else None
        return {"versions": await run_in_threadpool(backend.versions, project)}

    @app.get("/metrics")
    def metrics() -> dict[str, Any]:
        return {}

    return app

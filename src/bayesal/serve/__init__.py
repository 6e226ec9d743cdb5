"""``bayesal serve``: a labeling web app over a crash-safe :class:`~bayesal.labeling.session.Session`.

:class:`LabelingService` serialises answers from any number of tabs or people onto one session;
:func:`create_app` is the FastAPI app (HTML page + JSON API, token header, offline assets);
:func:`run_server` serves it with uvicorn. Needs the ``serve`` extra (FastAPI, uvicorn).
"""

from .guess import model_guess
from .service import LabelingService

__all__ = ["LabelingService", "create_app", "run_server", "check_bind", "model_guess"]


def __getattr__(name: str):
    # the web stack is imported only when the app is built, so the service works without FastAPI
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "check_bind":
        from .app import check_bind

        return check_bind
    if name == "run_server":
        from .server import run_server

        return run_server
    raise AttributeError(name)

"""Run the Label Studio ML backend with uvicorn."""

from __future__ import annotations

import ipaddress
import os

from bayesal.exceptions import InvalidInputError

from .backend import BackendSettings, LabelStudioBackend
from .client import LabelStudioClient
from .push import PredictionPusher

__all__ = ["run", "is_loopback"]


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(
    state_dir: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 9090,
    settings: BackendSettings | None = None,
    basic_auth: tuple[str, str] | None = None,
    log_level: str = "info",
    label_studio: tuple[str, str] | None = None,
) -> None:
    """Serve the backend until interrupted. A host other than loopback needs ``basic_auth`` (the user
    and password to enter in Label Studio's model settings). With ``label_studio`` (Label Studio's URL
    and an API token) fresh predictions are pushed into Label Studio after every change
    (:class:`~.push.PredictionPusher`)."""
    import uvicorn

    from .app import create_app

    if not is_loopback(host) and basic_auth is None:
        raise InvalidInputError(
            f"--host {host} exposes the backend beyond this machine; give --basic-auth USER:PASSWORD and enter "
            "them in Label Studio's model settings (Basic Authentication)"
        )
    client = LabelStudioClient(*label_studio) if label_studio is not None else None  # checked before the backend opens
    backend = LabelStudioBackend(state_dir, settings)
    pusher = PredictionPusher(backend, client) if client is not None else None
    app = create_app(backend, basic_auth=basic_auth, pusher=pusher)
    uvicorn.run(app, host=host, port=int(port), log_level=log_level, timeout_graceful_shutdown=5)

"""Run the web app with uvicorn (one process; the service serialises the answers)."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any, TextIO

from .app import check_bind, create_app, is_loopback
from .service import LabelingService

__all__ = ["run_server", "page_url"]


class _Stop(Exception):
    """SIGTERM arrived (after uvicorn's graceful shutdown)."""


def _raise_stop(signum: int, frame: Any) -> None:
    raise _Stop()


def page_url(host: str, port: int, token: str | None) -> str:
    """The address to open: ``http://HOST:PORT/`` plus ``?token=…`` when a token is required."""
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    if shown in ("0.0.0.0", "[::]"):
        shown = "<this machine's address>"
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def run_server(
    service: LabelingService,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    log_level: str = "warning",
    out: TextIO | None = None,
) -> None:
    """Serve ``service`` until interrupted (Ctrl+C / SIGTERM), then close its session.

    Off loopback a token is required: ``token`` or, if None, a random one (printed with the URL).
    """
    import uvicorn

    out = out if out is not None else sys.stdout
    token = check_bind(host, token)
    app = create_app(service, token=token)
    print(f"bayesal serve: {service.name} on {page_url(host, port, token)}", file=out, flush=True)
    if not is_loopback(host):
        print("  reachable from other machines: share the URL with its token only with the people labeling; "
              "the traffic is plain HTTP (use an SSH tunnel or a TLS proxy across untrusted networks)",
              file=out, flush=True)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False,
                            server_header=False, date_header=False)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal to the handler that was
    # installed before it: make that handler end run() with an exception, so the session is closed here.
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        uvicorn.Server(config).run()
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        service.close()
        print(f"bayesal serve: saved {service.session.n_labeled} labels in {service.session.state_dir}",
              file=out, flush=True)

"""A real ``bayesal serve`` process on 127.0.0.1 for the process and browser tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[2] / "src")
MAX_LIFETIME_S = 240  # a server left running by a failed test is killed after this long


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``python -m bayesal serve ARGS`` on a free loopback port; killed at the latest after MAX_LIFETIME_S."""

    def __init__(self, args: list[str], log: Path, token: str | None = None) -> None:
        self.args, self.log_path, self.token = args, log, token
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self._timer: threading.Timer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def page(self) -> str:
        return self.url + (f"?token={self.token}" if self.token else "")

    def headers(self) -> dict[str, str]:
        return {"X-Bayesal-Token": self.token or "-"}

    def start(self, timeout: float = 90.0) -> ServerProcess:
        import httpx

        cmd = [sys.executable, "-m", "bayesal", "serve", *self.args, "--host", "127.0.0.1", "--port", str(self.port)]
        if self.token:
            cmd += ["--token", self.token]
        env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.log = open(self.log_path, "ab")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self._timer = threading.Timer(MAX_LIFETIME_S, self.kill)
        self._timer.daemon = True
        self._timer.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}: {self.output()}")
            try:
                if httpx.get(self.url + "api/info", headers=self.headers(), timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"the server did not start within {timeout}s: {self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._close()

    def stop(self) -> None:
        """SIGTERM (uvicorn shuts down and the session is closed), SIGKILL after 20 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._close()

    def _close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if getattr(self, "log", None) is not None and not self.log.closed:
            self.log.close()


@pytest.fixture
def serve_process(tmp_path):
    """Factory: ``serve_process(args, token=None)`` starts a server; all are stopped at the end of the test."""
    started: list[ServerProcess] = []

    def start(args: list[str], token: str | None = None) -> ServerProcess:
        srv = ServerProcess(args, tmp_path / f"server{len(started)}.log", token=token).start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()

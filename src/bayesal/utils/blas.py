"""Thread limits for NumPy/SciPy's BLAS (torch's own thread pool is separate and left alone)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from threadpoolctl import ThreadpoolController

__all__ = ["blas_threads"]

_controller: ThreadpoolController | None = None


def _blas_controller() -> ThreadpoolController:
    # scanning the loaded libraries takes milliseconds; limiting through a kept controller ~20 µs
    global _controller
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller


@contextmanager
def blas_threads(limit: int) -> Iterator[None]:
    """Limit NumPy/SciPy's BLAS thread pools to ``limit`` (≥ 1) threads inside the block."""
    with _blas_controller().limit(limits=max(1, int(limit)), user_api="blas"):
        yield

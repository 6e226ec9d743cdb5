"""Thread limits for NumPy/SciPy's BLAS (torch's own thread pool is separate and left alone)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
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
def blas_threads(limit: int | None = None) -> Iterator[None]:
    """Limit NumPy/SciPy's BLAS thread pools to ``limit`` threads inside the block (default: torch's
    thread count, ``torch.get_num_threads()``)."""
    n = torch.get_num_threads() if limit is None else int(limit)
    with _blas_controller().limit(limits=max(1, n), user_api="blas"):
        yield

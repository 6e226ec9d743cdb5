import numpy as np
import pytest
import torch


@pytest.fixture
def toy():
    """Small well-separated 3-class problem with a fitted posterior."""
    g = torch.Generator().manual_seed(0)
    n, d, c = 60, 5, 3
    centers = torch.randn(c, d, generator=g, dtype=torch.float64) * 2
    y = torch.arange(n) % c
    x = centers[y] + torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(c, d, generator=g, dtype=torch.float64) * 0.3
    b = torch.randn(c, generator=g, dtype=torch.float64) * 0.1
    return x, y, w, b


def _clustered_pool(n: int = 240, d: int = 6, c: int = 3, seed: int = 0, spread: float = 2.5,
                    dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.random.Generator]:
    """``n`` rows around ``c`` Gaussian centers (``spread`` apart) and their labels, plus the centers and
    the generator (for further draws from the same stream, e.g. test rows)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(c, d)) * spread
    y = rng.integers(0, c, size=n)
    x = (centers[y] + rng.normal(size=(n, d))).astype(dtype)
    return x, y, centers, rng


@pytest.fixture(scope="session")
def clustered_pool():
    """The synthetic pool maker shared by the labeling, serve and session tests."""
    return _clustered_pool

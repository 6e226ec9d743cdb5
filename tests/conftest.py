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

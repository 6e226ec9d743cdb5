"""Seeding helpers: every random choice in bayesal goes through an explicit ``torch.Generator``."""

from __future__ import annotations

import torch

__all__ = ["as_generator", "RandomState"]

RandomState = int | torch.Generator | None


def as_generator(random_state: RandomState = None) -> torch.Generator:
    """A CPU ``torch.Generator``: passed through, seeded from an int, or freshly seeded when None."""
    if isinstance(random_state, torch.Generator):
        return random_state
    gen = torch.Generator()
    if random_state is None:
        gen.seed()
    else:
        if isinstance(random_state, bool) or not isinstance(random_state, int):
            raise TypeError(f"random_state must be an int, a torch.Generator or None, got {random_state!r}")
        gen.manual_seed(int(random_state))
    return gen

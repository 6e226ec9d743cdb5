"""Seeding helpers: every random choice in bayesal goes through an explicit ``torch.Generator``."""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from bayesal.exceptions import InvalidTypeError

__all__ = ["as_generator", "derive_seed", "derive_generator", "RandomState"]

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
            raise InvalidTypeError(f"random_state must be an int, a torch.Generator or None, got {random_state!r}")
        gen.manual_seed(int(random_state))
    return gen


def derive_seed(seed: int, *parts: Any) -> int:
    """A 63-bit seed from ``seed`` and tags/counters, stable across processes and platforms: one
    independent stream per purpose, so one consumer's draws cannot shift another's."""
    # NumPy integers hash as Python ints (their repr differs, and changes between NumPy versions)
    norm = tuple(int(p) if hasattr(p, "__index__") and not isinstance(p, bool) else p for p in parts)
    h = hashlib.blake2b(repr((int(seed),) + norm).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


def derive_generator(seed: int, *parts: Any) -> torch.Generator:
    """A CPU generator seeded with :func:`derive_seed`."""
    return torch.Generator().manual_seed(derive_seed(seed, *parts))

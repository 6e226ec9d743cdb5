"""The ``bayesal`` command line: ``run``, ``plot``, ``demo``, ``datasets`` and ``label``."""

from .commands import main

__all__ = ["main"]

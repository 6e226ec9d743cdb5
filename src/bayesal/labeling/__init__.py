"""Labeling by a person: a crash-safe :class:`Session` with instant Bayesian updates.

:class:`Session` is the facade; behind it, one module per job: ``config`` (the saved header),
``history`` (labels, undo/redo bookkeeping), ``state`` (events → posterior, undo cache), ``replay``
(the posterior of a history), ``signals`` (stopping signals), ``store`` (the locked state directory,
:class:`StorageOptions`), ``recovery`` (which copy of the events to trust) and ``storage`` (file
formats).
"""

from .session import Session
from .store import StorageOptions

__all__ = ["Session", "StorageOptions"]

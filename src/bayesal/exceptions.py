"""Exception types of bayesal.

Every error bayesal raises on purpose is a :class:`BayesalError`, so callers (and the CLI, which prints
the message instead of a traceback) can tell a known problem from a bug. Each subclass also derives from
the built-in type a Python user would expect (``ValueError`` for bad input, ``OSError`` for files), so
``except ValueError`` keeps working. Callers branch on the type, never on the message text.
"""

from __future__ import annotations

__all__ = [
    "BayesalError",
    "InvalidInputError",
    "InvalidTypeError",
    "NotFittedError",
    "NumericalError",
    "DataFileError",
    "MissingDataError",
    "MissingFileError",
    "MissingDependencyError",
    "BackboneError",
    "StorageError",
    "CorruptStateError",
    "SessionLockedError",
    "StateMismatchError",
    "SessionNotFoundError",
    "SessionExistsError",
    "ResultsFileError",
    "StrategyError",
    "StaleAnswerError",
]


class BayesalError(Exception):
    """Base class of every error bayesal raises on purpose; its message says what, where and what to do."""


class InvalidInputError(BayesalError, ValueError):
    """An argument or an input array has the wrong type, shape, range or content."""


class InvalidTypeError(InvalidInputError, TypeError):
    """An argument is of the wrong type (a ``TypeError`` as well as an :class:`InvalidInputError`)."""


class NotFittedError(BayesalError, RuntimeError):
    """A model was used before ``fit`` (like scikit-learn's ``NotFittedError``)."""


class NumericalError(BayesalError, ArithmeticError):
    """A computation would overflow or lose positive definiteness (e.g. features of extreme scale)."""


class DataFileError(BayesalError, ValueError):
    """A data, cache or features file cannot be read as what it claims to be."""


class MissingDataError(BayesalError, FileNotFoundError):
    """A data set's files are not installed where bayesal looks; the message says how to get them."""


class StorageError(BayesalError, OSError):
    """Writing or reading a file failed (read-only location, disk full, not a directory, ...)."""


class MissingFileError(StorageError, FileNotFoundError):
    """A file the caller named (or one an installed package should ship) does not exist."""


class MissingDependencyError(BayesalError, ImportError):
    """An optional dependency a feature needs is not installed; the message names the extra to install."""


class BackboneError(BayesalError, RuntimeError):
    """A feature extractor (backbone) returned output that does not fit its input (wrong number of rows)."""


class CorruptStateError(BayesalError, ValueError):
    """A state file or label log exists but cannot be trusted (bad checksum, unreadable, inconsistent)."""


class SessionLockedError(BayesalError, ValueError):
    """Another process holds the session directory."""


class StateMismatchError(BayesalError, ValueError):
    """A saved session does not belong to the data or configuration it is resumed with."""


class SessionNotFoundError(MissingFileError):
    """A directory that should hold a labeling session holds none (no label log, no state file)."""


class SessionExistsError(InvalidInputError):
    """A new labeling session was asked for in a directory that already holds one."""


class ResultsFileError(BayesalError, ValueError):
    """An experiment results file has the wrong format, columns or content."""


class StrategyError(BayesalError, RuntimeError):
    """A query strategy returned an invalid batch (wrong size, repeated or out-of-range indices)."""


class StaleAnswerError(BayesalError, ValueError):
    """An answer, correction or undo refers to a state that another person or tab has already changed."""

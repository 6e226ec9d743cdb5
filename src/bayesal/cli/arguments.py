"""Command-line argument types that check ranges, and the one place that turns an error into a sentence.

``argparse`` calls the types below while parsing, so ``--epochs -1`` is refused with a usage line
before anything is loaded or computed. :func:`run_guarded` runs a command and prints a known error
(:class:`~bayesal.exceptions.BayesalError`, ``ValueError``, ``OSError``) as one line instead of a
traceback; ``--debug`` (or ``BAYESAL_DEBUG=1``) shows the traceback as well.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import traceback
from collections.abc import Callable
from typing import Any

from bayesal.exceptions import BayesalError
from bayesal.utils.locations import describe_os_error

__all__ = [
    "Parser", "positive_int", "non_negative_int", "positive_float", "non_negative_float", "add_debug_option",
    "error_sentence", "run_guarded",
]


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line (``bayesal run: error: --seeds must be >= 1,
    got 0; see bayesal run --help``) instead of the whole usage block."""

    def error(self, message: str) -> None:  # type: ignore[override]
        message = re.sub(r"^argument ([^:]+): (must )", r"\1 \2", message)
        message = re.sub(r"^argument ", "", message)
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0."""
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def add_debug_option(parser: argparse.ArgumentParser, *, top: bool = False) -> None:
    """``--debug``: show the traceback of an error too. On sub-commands it defaults to "not given" so
    ``bayesal --debug run`` and ``bayesal run --debug`` both work."""
    parser.add_argument("--debug", action="store_true", default=False if top else argparse.SUPPRESS,
                        help="on an error, print the full traceback as well")


def error_sentence(err: BaseException) -> str:
    """The message a user sees for a known error: ours as they are, an ``OSError`` as what and where."""
    if isinstance(err, BayesalError):
        return str(err)
    if isinstance(err, OSError) and err.strerror:
        where = f" {err.filename}" if err.filename else ""
        return f"could not access{where}: {describe_os_error(err)}"
    return str(err) or type(err).__name__


def run_guarded(func: Callable[[argparse.Namespace], Any], args: argparse.Namespace, prog: str) -> int:
    """Run ``func(args)``; a known error is printed as ``<prog>: error: <sentence>`` (exit 2), anything
    else as an internal error with a hint to rerun with ``--debug`` (exit 1)."""
    debug = bool(getattr(args, "debug", False)) or os.environ.get("BAYESAL_DEBUG", "") not in ("", "0")
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; everything saved so far is kept", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        return 0
    except (BayesalError, ValueError, OSError) as err:
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {error_sentence(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - a bug: say so in one line, details with --debug
        if debug:
            traceback.print_exc()
        print(f"{prog}: internal error ({type(err).__name__}: {err}); run again with --debug for the "
              "traceback and report it", file=sys.stderr)
        return 1

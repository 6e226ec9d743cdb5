"""Command-line argument types that check ranges, and the one place that turns an error into a sentence.

``argparse`` calls the types below while parsing, so ``--epochs -1`` is refused with a usage line
before anything is loaded or computed. :func:`add_posterior_arguments` gives every command that builds
a posterior the same options, and :func:`posterior_options_from` turns them into a
:class:`~bayesal.laplace.settings.PosteriorOptions`. :func:`run_guarded` runs a command and prints a known error
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
from typing import TYPE_CHECKING, Any

from bayesal.exceptions import BayesalError
from bayesal.utils import describe_os_error

if TYPE_CHECKING:
    from bayesal.laplace import PosteriorOptions

__all__ = [
    "Parser", "positive_int", "non_negative_int", "positive_float", "non_negative_float", "prior_precision",
    "add_posterior_arguments", "add_reselect_arguments", "add_stop_arguments", "audit_rate", "posterior_options_from",
    "session_settings", "add_debug_option", "error_sentence", "run_guarded",
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


def prior_precision(text: str) -> float | str:
    """A prior precision λ₀: a finite number > 0, or how to choose it from the labels (``cv``,
    ``cv-predictive``, ``evidence``)."""
    from bayesal.laplace import PriorSelection

    if text in PriorSelection.choices():
        return text
    try:
        return positive_float(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"must be a number > 0 or one of {', '.join(PriorSelection.choices())}, got {text!r}"
        ) from None


def add_reselect_arguments(parser: argparse.ArgumentParser) -> None:
    """The doubling re-selection schedule of a new session (``bayesal label`` and ``bayesal serve``)."""
    parser.add_argument("--reselect-base", type=positive_int, default=10,
                        help="refit the head, re-selecting the prior precision and the spread, when the labels reach "
                             "N, 2N, 4N, ... (in the background; default 10)")
    parser.add_argument("--no-reselect", action="store_true",
                        help="no doubling schedule: refit only every --retrain-every labels or on request")


def add_posterior_arguments(parser: argparse.ArgumentParser, *, default: str = "the posterior's") -> None:
    """The posterior's options, the same for every command that builds one (``run``, ``label``,
    ``serve``, ``labelstudio``). Each defaults to ``None``, "not given": :func:`posterior_options_from`
    then keeps the command's own default (``default`` names it in the help of ``--prior-precision``).
    """
    from bayesal.laplace import Curvature, HeadSolver, Hessian

    group = parser.add_argument_group("posterior")
    group.add_argument("--paper", action="store_true",
                       help="the paper's setup: one update step with γ = 10 and the gaussian curvature, λ₀ = 1, "
                            "200 epochs of RAdam for the head (the options below override it)")
    group.add_argument("--prior-precision", type=prior_precision, default=None, metavar="LAMBDA",
                       help=f"prior precision λ₀ > 0, or cv, cv-predictive, evidence to choose it from the labels at "
                            f"each head fit (default: {default})")
    group.add_argument("--gamma", type=positive_float, default=None,
                       help="step size γ of the Bayesian update (default 1 with 5 Newton steps; 10 with --paper)")
    group.add_argument("--steps", type=positive_int, default=None,
                       help="Newton steps of an update (default 5; 1 with --paper)")
    group.add_argument("--curvature", choices=Curvature.choices(), default=None,
                       help="curvature of the shared covariance (default categorical; gaussian with --paper)")
    group.add_argument("--hessian", choices=Hessian.choices(), default=None,
                       help="structure of the covariance (default shared)")
    group.add_argument("--lambda-mf", type=non_negative_float, default=None,
                       help="scale of the mean-field predictive (default π/8)")
    group.add_argument("--head-solver", choices=HeadSolver.choices(), default=None,
                       help="how the head is fitted: exact (the MAP, default) or radam (the paper's recipe; --paper)")
    group.add_argument("--epochs", type=non_negative_int, default=None,
                       help="training epochs of the radam head (default 200)")


def posterior_options_from(args: argparse.Namespace, base: PosteriorOptions | None = None) -> PosteriorOptions:
    """The :class:`~bayesal.laplace.settings.PosteriorOptions` that :func:`add_posterior_arguments`'
    options in ``args`` describe: ``base`` (default: the library's defaults), or the paper's with
    ``--paper``, with every option given replacing its field."""
    from dataclasses import replace

    from bayesal.laplace import PosteriorOptions

    options = PosteriorOptions.paper() if args.paper else (base if base is not None else PosteriorOptions())
    changes = {key: getattr(args, key) for key in ("prior_precision", "gamma", "steps", "curvature", "hessian", "lambda_mf")
               if getattr(args, key) is not None}
    head = {key: value for key, value in (("solver", args.head_solver), ("epochs", args.epochs)) if value is not None}
    if head:
        changes["head"] = replace(options.head, **head)
    return options.replace(**changes)


def session_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments of a new :class:`~bayesal.labeling.session.Session` that the options of
    ``bayesal label`` and ``bayesal serve`` give (strategy, posterior, refits, re-selection, candidates,
    seed), the same for a built-in data set, a user file or raw ``--items``."""
    return {
        "strategy": args.strategy or "margin",
        "options": posterior_options_from(args),
        "retrain_every": args.retrain_every or None,
        "reselect": None if args.no_reselect else "doubling",
        "reselect_base": args.reselect_base,
        "candidate_size": args.candidate_size or None,
        "random_state": args.seed,
        "audit_rate": getattr(args, "audit_rate", 0.0) or 0.0,
    }


def audit_rate(text: str) -> float:
    """A probability in ``[0, 1)`` (``--audit-rate``)."""
    value = _float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1), got {text!r}")
    return value


def add_stop_arguments(parser: argparse.ArgumentParser) -> None:
    """``--audit-rate`` and ``--stop-when-gain-below`` of ``bayesal label`` and ``bayesal serve``."""
    parser.add_argument("--audit-rate", type=audit_rate, default=0.0,
                        help="probability that the next item asked is drawn uniformly at random from the pool (an "
                             "audit label, logged as such); makes the accuracy interval honest (e.g. 0.1; a new "
                             "session only: a resumed one keeps its own; default 0)")
    # bayesal.labeling.signals.DEFAULT_STOP_GAIN, not imported: parsing the arguments loads no torch
    parser.add_argument("--stop-when-gain-below", type=non_negative_float, default=0.02, metavar="GAIN",
                        help="recommend stopping once the expected accuracy gain of the next 50 labels is below "
                             "GAIN: at most the share of the predictions they change, at the rate of the last "
                             "half of the labels (default 0.02)")


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

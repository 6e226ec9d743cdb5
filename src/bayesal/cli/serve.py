"""``bayesal serve``: the labeling web app on a built-in dataset or a features file.

Opens (or resumes) a labeling session exactly like ``bayesal label`` — same data options, same
``--state-dir`` / ``--resume`` / ``--recover`` semantics, same session files — and serves it in the
browser::

    bayesal serve --dataset bbcnews --state-dir bbc-labels          # then open http://127.0.0.1:8765/
    bayesal serve --resume bbc-labels                               # continue later (or after a crash)
    bayesal serve --dataset my.parquet --item-column text --host 0.0.0.0   # prints a URL with a token
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from bayesal.data import add_file_options
from bayesal.exceptions import MissingDependencyError

from .arguments import (
    add_posterior_arguments,
    add_reselect_arguments,
    add_stop_arguments,
    non_negative_float,
    non_negative_int,
    positive_int,
)
from .items import add_items_arguments

__all__ = ["add_serve_arguments", "serve_main"]


def _port(text: str) -> int:
    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 1..65535, got {value}")
    return value


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``bayesal serve``: those of ``bayesal label`` that apply, plus where to listen."""
    parser.add_argument("--dataset", default=None,
                        help="built-in dataset (e.g. bbcnews, digits) or a features file (.npy/.npz/.parquet/.csv)")
    add_file_options(parser)
    parser.add_argument("--state-dir", default=None,
                        help="directory of a new session (default: ./bayesal-label-<dataset>)")
    parser.add_argument("--resume", default=None, metavar="DIR", help="continue the session saved in DIR")
    parser.add_argument("--recover", action="store_true",
                        help="with --resume: rebuild a damaged session (label log or state file), keeping replaced files")
    parser.add_argument("--drop-damaged", action="store_true",
                        help="with --recover: keep the events before the damage of a label log damaged in the middle")
    parser.add_argument("--strategy", default=None, help="query strategy (default margin; a resumed session keeps its own)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="random seed of a new session (default 0)")
    parser.add_argument("--retrain-every", type=non_negative_int, default=0,
                        help="also retrain the head from scratch after this many labels (in the background; "
                             "default 0 = only on the doubling schedule and when Retrain is pressed)")
    add_reselect_arguments(parser)
    parser.add_argument("--candidate-size", type=non_negative_int, default=1000, help="random candidates scored per query (default 1000)")
    parser.add_argument("--window", type=positive_int, default=10, help="labels spanned by the stopping signals (default 10)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; any other address requires a token)")
    parser.add_argument("--port", type=_port, default=8765, help="port (default 8765)")
    parser.add_argument("--token", default=None,
                        help="secret every request must carry (default: none on loopback, a random one printed at "
                             "start otherwise)")
    parser.add_argument("--lease-seconds", type=non_negative_float, default=120.0,
                        help="how long an item shown to one tab is kept from the others (default 120; 0 = all tabs "
                             "see the top pick)")
    parser.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (default 1)")
    add_items_arguments(parser)
    parser.add_argument("--no-speculate", action="store_true",
                        help="do not compute the next item under each likely answer while an item is shown")
    add_stop_arguments(parser)
    add_posterior_arguments(parser, default="cv; a resumed session keeps its own options")


def build_service(args: argparse.Namespace, out: Any = None) -> Any:
    """Open the session as ``bayesal label`` does and wrap it in a :class:`LabelingService`."""
    from bayesal.serve import LabelingService

    from .label import open_session

    out = out if out is not None else sys.stdout
    args.batch = 1  # the session opener shares its checks with `bayesal label`
    session, ds = open_session(args, out)
    session.stop_when_gain_below = args.stop_when_gain_below
    try:
        return LabelingService(session, name=ds.name, test_features=ds.test_features, test_labels=ds.test_labels,
                               window=args.window, lease_seconds=args.lease_seconds, user=args.user,
                               item_ids=getattr(ds, "item_ids", None), item_locations=getattr(ds, "item_locations", None),
                               class_prior=getattr(ds, "class_prior", None), speculate=not getattr(args, "no_speculate", False))
    except BaseException:
        session.close()
        raise


def serve_main(args: argparse.Namespace) -> int:
    """Entry point of ``bayesal serve``: serve until Ctrl+C; every acknowledged answer is on disk."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as err:
        raise MissingDependencyError(f"bayesal serve needs the web stack ({err}); install it with pip install 'bayesal[serve]'") from err
    from bayesal.serve import check_bind

    check_bind(args.host, args.token)  # refuse a too-short token before loading any data
    from bayesal.serve import run_server

    service = build_service(args)
    run_server(service, host=args.host, port=args.port, token=args.token)
    return 0

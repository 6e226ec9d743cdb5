"""``bayesal labelstudio``: run bayesal as a Label Studio ML backend."""

from __future__ import annotations

import argparse
import sys

# imported here, not on use: if the backend cannot be imported, `bayesal` runs without this command
from bayesal.labelstudio import SCORE_STRATEGIES

from .arguments import add_posterior_arguments, positive_int, posterior_options_from

__all__ = ["add_labelstudio_arguments", "labelstudio_main"]


def add_labelstudio_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", required=True,
                   help="folder for the backend's state (one sub-folder per Label Studio project)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=positive_int, default=9090, help="port (default 9090)")
    p.add_argument("--strategy", default="margin", choices=SCORE_STRATEGIES,
                   help="utility reported as each prediction's score (default margin); seq-NAME: the "
                        "--batch-size tasks picked one after another with a Bayesian update in between "
                        "score above all others, in pick order")
    p.add_argument("--batch-size", type=positive_int, default=10,
                   help="picks of a seq- strategy per prediction request (default 10)")
    p.add_argument("--seed", type=int, default=None, help="seed of head refits (default: drawn, saved)")
    p.add_argument("--files-root", default=None,
                   help="Label Studio's local-files root (LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT), for image tasks")
    p.add_argument("--upload-root", default=None,
                   help="<Label Studio data dir>/media/upload, for images uploaded to Label Studio")
    p.add_argument("--basic-auth", default=None, metavar="USER:PASSWORD",
                   help="require HTTP Basic authentication (needed with a --host other than loopback)")
    p.add_argument("--label-studio-url", default=None, metavar="URL",
                   help="Label Studio's address (e.g. http://localhost:8080; default: $LABEL_STUDIO_URL): after "
                        "each annotation the backend writes fresh predictions there, so the Data Manager's sort "
                        "by prediction score is current without Retrieve predictions; needs --label-studio-token")
    p.add_argument("--label-studio-token", default=None, metavar="TOKEN",
                   help="Label Studio API token (Account & Settings → Access Token; default: $LABEL_STUDIO_API_KEY)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--threads", type=positive_int, default=1, help="torch CPU threads (default 1)")
    add_posterior_arguments(p, default="1; with cv, cv-predictive or evidence the first annotations update the "
                                        "prior N(0, I) and each Start Training chooses λ₀")


def labelstudio_main(args: argparse.Namespace) -> int:
    import os

    from bayesal.labelstudio import BackendSettings, LabelStudioClient, run

    auth = None
    if args.basic_auth is not None:
        user, sep, password = args.basic_auth.partition(":")
        if not sep or not user or not password:
            print("bayesal: error: --basic-auth must be USER:PASSWORD", file=sys.stderr)
            return 2
        auth = (user, password)
    url = args.label_studio_url or os.environ.get("LABEL_STUDIO_URL") or None
    token = args.label_studio_token or os.environ.get("LABEL_STUDIO_API_KEY") or None
    if (url is None) != (token is None):
        given, missing = ("--label-studio-url", "--label-studio-token") if url else ("--label-studio-token", "--label-studio-url")
        print(f"bayesal: error: {given} needs {missing} too (or $LABEL_STUDIO_URL and $LABEL_STUDIO_API_KEY)",
              file=sys.stderr)
        return 2
    label_studio = None
    if url is not None and token is not None:
        LabelStudioClient(url, token)  # a malformed URL or token is refused before the server starts
        label_studio = (url, token)
    files_root = args.files_root or None
    if files_root is None:
        files_root = os.environ.get("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT") or None
    settings = BackendSettings(
        strategy=args.strategy, batch_size=args.batch_size,
        posterior=posterior_options_from(args, BackendSettings().posterior), seed=args.seed,
        files_root=files_root, upload_root=args.upload_root,
    )
    print(f"bayesal Label Studio backend on http://{args.host}:{args.port} (state in {args.state_dir}); "
          f"connect it in Label Studio: Project → Settings → Model → Connect Model", file=sys.stderr)
    if label_studio is not None:
        print(f"predictions are pushed to Label Studio at {label_studio[0]} after every change", file=sys.stderr)
    run(args.state_dir, host=args.host, port=args.port, settings=settings, basic_auth=auth, log_level=args.log_level,
        label_studio=label_studio)
    return 0

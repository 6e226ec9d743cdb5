"""Command-line interface: ``bayesal run | plot | label | review | serve | labelstudio | export | predict | datasets | demo``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .arguments import (
    Parser,
    add_debug_option,
    add_posterior_arguments,
    non_negative_int,
    positive_int,
    posterior_options_from,
    run_guarded,
)

__all__ = ["main", "build_parser"]

DEMO_STRATEGIES = ["random", "margin", "seq-margin", "badge"]


def _default_dataset() -> str:
    from bayesal.data import list_datasets

    names = list_datasets()
    return next((n for n in ("bbcnews", "digits") if n in names), sorted(names)[0])


def _cmd_datasets(args: argparse.Namespace) -> int:
    from bayesal.data import list_datasets

    for name, desc in list_datasets().items():
        print(f"{name:14s} {desc}")
    return 0


def _config(args: argparse.Namespace):
    from bayesal.experiments import ALConfig

    return ALConfig(
        batch_size=args.batch_size, cycles=args.cycles, initial_size=args.initial_size,
        candidate_size=None if args.candidate_size == 0 else args.candidate_size,
        posterior=posterior_options_from(args),
    )


def _load(name: str, **loader_kwargs):
    from bayesal.data import load_dataset

    t0 = time.perf_counter()
    ds = load_dataset(name, **loader_kwargs)
    print(f"loaded {ds!r} in {time.perf_counter() - t0:.1f}s ({ds.meta.get('backbone', '?')})", file=sys.stderr)
    return ds


def _print_summary(df, metric: str = "accuracy") -> None:
    from bayesal.experiments import aulc_table

    tab = aulc_table(df, metric)
    print(f"\narea under the learning curve ({metric}), mean ± s.e. over seeds")
    print(tab.to_string(index=False, float_format=lambda v: f"{v:.4f}"))


def _cmd_run(args: argparse.Namespace) -> int:
    from bayesal.data import file_loader_kwargs
    from bayesal.experiments import check_run_request, run_experiment

    cfg = _config(args)
    check_run_request(args.strategy, args.out)  # before loading: a typo costs no featurisation
    ds = _load(args.dataset, **file_loader_kwargs(args))
    df = run_experiment(ds, args.strategy, cfg, range(args.seed, args.seed + args.seeds), out=args.out,
                        progress=not args.no_progress)
    skipped = df.attrs.get("skipped_runs", 0)
    note = f" ({skipped} finished (strategy, seed) run(s) already in the file were kept, not rerun)" if skipped else ""
    print(f"{args.out}: {len(df)} rows for this command{note}")
    _print_summary(df)
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from bayesal.experiments import plot_learning_curves, read_results

    df = read_results(args.results)
    out = args.out or Path(args.results).with_suffix(f".{args.metric}.png")
    plot_learning_curves(df, out, metric=args.metric)
    print(f"wrote {out}")
    _print_summary(df, args.metric)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """Short AL comparison on built-in real data, with a plot and an AULC table."""
    from bayesal.experiments import ALConfig, plot_learning_curves, run_experiment
    from bayesal.laplace import HeadConfig, PosteriorOptions

    ds = _load(args.dataset or _default_dataset())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.parquet"
    if results.exists():
        results.unlink()  # the demo is idempotent: a fresh run each time
    cfg = ALConfig(batch_size=args.batch_size, cycles=args.cycles,
                   posterior=PosteriorOptions(head=HeadConfig(epochs=args.epochs)))
    df = run_experiment(ds, DEMO_STRATEGIES, cfg, range(args.seeds), out=results)
    png = plot_learning_curves(df, out / "learning_curves.png", title=f"{ds.name}: accuracy vs labels")
    _print_summary(df)
    print(f"\nresults: {results}\nplot:    {png}")
    return 0


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=positive_int, default=10, help="labels per cycle b (default 10)")
    p.add_argument("--cycles", type=non_negative_int, default=20, help="AL cycles (default 20)")
    p.add_argument("--initial-size", type=positive_int, default=None, help="initial random labels (default: b)")
    p.add_argument("--candidate-size", type=non_negative_int, default=1000,
                   help="random candidates scored per query (default 1000; 0 = whole pool)")
    add_posterior_arguments(p, default="cv")
    _add_threads_option(p)


def _add_threads_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch CPU threads (default 1: the small head trains fastest on one thread, and "
                        "several threads slow down badly when other processes share the cores)")


def build_parser() -> argparse.ArgumentParser:
    from bayesal.data import add_file_options

    ap = Parser(prog="bayesal", description="Deep active learning with fast Bayesian updates.")
    add_debug_option(ap, top=True)
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run AL experiments (paper protocol) and append results")
    p.add_argument("--dataset", default=None,
                   help="built-in dataset (see `bayesal datasets`) or a features file (.npy/.npz/.parquet/.csv)")
    add_file_options(p)
    p.add_argument("--strategy", nargs="+", required=True,
                   help="strategy specs: NAME, seq-NAME[@oracle|most_likely|sampled|expected], lookahead, oracle-lookahead")
    p.add_argument("--seeds", type=positive_int, default=10, help="number of seeds (default 10)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="first seed (default 0)")
    p.add_argument("--out", default="results.parquet", help="results file, .parquet or .csv (appended)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_run_options(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("plot", help="learning curves (mean ± s.e.) and an AULC table from a results file")
    p.add_argument("results")
    p.add_argument("--metric", default="accuracy", choices=["accuracy", "nll", "brier", "ece"])
    p.add_argument("--out", default=None, help="PNG path (default: next to the results)")
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser("datasets", help="list the built-in datasets")
    p.set_defaults(func=_cmd_datasets)

    p = sub.add_parser("demo", help="a short AL comparison on built-in real data, with a plot")
    p.add_argument("--dataset", default=None)
    p.add_argument("--out", default="demo_output")
    p.add_argument("--seeds", type=positive_int, default=3)
    p.add_argument("--cycles", type=non_negative_int, default=10)
    p.add_argument("--batch-size", type=positive_int, default=10)
    p.add_argument("--epochs", type=non_negative_int, default=200)
    _add_threads_option(p)
    p.set_defaults(func=_cmd_demo)

    try:
        from .label import add_label_arguments, label_main
    except ImportError:  # labeling is optional at import time
        pass
    else:
        p = sub.add_parser("label", help="label instances in the terminal, one at a time, with instant updates")
        add_label_arguments(p)
        p.set_defaults(func=label_main)
    try:
        from .review import add_review_arguments, review_main
    except ImportError:  # labeling is optional at import time
        pass
    else:
        p = sub.add_parser("review", help="review a session's labels in the terminal, most doubted first")
        add_review_arguments(p)
        p.set_defaults(func=review_main)
    try:
        from .labelstudio import add_labelstudio_arguments, labelstudio_main
    except ImportError:  # the Label Studio backend is optional at import time
        pass
    else:
        p = sub.add_parser("labelstudio", help="run bayesal as a Label Studio ML backend (active learning)")
        add_labelstudio_arguments(p)
        p.set_defaults(func=labelstudio_main)
    try:
        from .serve import add_serve_arguments, serve_main
    except ImportError:  # the web app needs the `serve` extra
        pass
    else:
        p = sub.add_parser("serve", help="label in the browser (web app), with instant Bayesian updates")
        add_serve_arguments(p)
        p.set_defaults(func=serve_main)
    from .model import add_export_arguments, add_predict_arguments, export_main, predict_main

    p = sub.add_parser("export", help="write a session's labels (id, item, label, annotator, time), and its model")
    add_export_arguments(p)
    p.set_defaults(func=export_main)
    p = sub.add_parser("predict", help="predict the classes of new items with a labeled model (probabilities)")
    add_predict_arguments(p)
    _add_threads_option(p)
    p.set_defaults(func=predict_main)
    for p in sub.choices.values():
        add_debug_option(p)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``bayesal``: a known error ends in one line on stderr and exit status 2 (a usage
    error is reported by argparse before anything is loaded); ``--debug`` adds the traceback."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help, or a usage error already printed by argparse
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
    if getattr(args, "threads", None) is not None:
        import torch

        torch.set_num_threads(args.threads)
    if getattr(args, "dataset", "unset") is None and args.command == "run":
        args.dataset = _default_dataset()
    return run_guarded(args.func, args, "bayesal")


if __name__ == "__main__":
    sys.exit(main())

"""``bayesal label``: label a built-in dataset or a features file in the terminal, with instant
Bayesian updates.

Shows one instance at a time (its text, an ASCII rendering of a small image, or its index), the
model's three most probable classes (or "no guess yet" while it has no labels or predicts every class
alike), and reads the answer from stdin — so it can be scripted::

    printf '3\\n5\\ns\\nu\\nq\\n' | python -m bayesal.cli.label --dataset digits --state-dir run1

Answers: a class name or class number (``#N`` for class number N; needed when the class names are
themselves numbers); ``s`` skip, ``u`` undo, ``redo`` redo, ``fix I LABEL`` correct the label of
instance ``#I``, ``+NAME`` add the class NAME, ``r`` retrain the head now, ``?`` help, ``q`` quit (end of input quits too). Every answer is durably saved before the next instance is shown;
``--resume DIR`` continues a session (``--recover`` rebuilds it when the state file or the label log is
damaged, keeping every file it replaces; ``--drop-damaged`` lets it keep the intact part of a log
damaged in the middle when no snapshot holds the rest). ``--oracle`` answers with the dataset's true labels (a scripted demo).

Stopping signals printed after each label (see :meth:`bayesal.labeling.session.Session.stopping_signals`):

* **the model's estimate of its accuracy on the pool** (the expected accuracy)
  ``EA = mean_x max_c p(c | x)`` over (a fixed subset of ≤ 2000 of) the pool — the model's own
  estimate, as good as its probabilities are calibrated; no true label is used;
* **gain/label**: ``(EA_now − EA_then) / (labels between)`` over the last ``--window`` labels;
* **flips**: how many pool predictions changed class over the last ``--window`` labels.

When the gain per label stays near zero and the flips near zero, more labels are unlikely to change
the classifier much.

Then the estimate (:meth:`bayesal.labeling.session.Session.estimate`): the accuracy on the unlabeled
pool with its 90 % interval — honest with audit labels (``--audit-rate 0.1``: a tenth of the items
asked are drawn at random, logged as audit labels and counted on the line), the model's own without — and the expected gain
of the next 50 labels, with "stop recommended" once it is below ``--stop-when-gain-below``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from bayesal.data import add_file_options
from bayesal.exceptions import CorruptStateError, InvalidInputError, StorageError
from bayesal.utils import check_writable_dir, safe_name

from .arguments import (
    Parser,
    add_posterior_arguments,
    add_reselect_arguments,
    add_stop_arguments,
    non_negative_int,
    positive_int,
    run_guarded,
    session_settings,
)
from .items import add_items_arguments, default_user

__all__ = ["add_label_arguments", "label_main", "parse_answer", "render_item", "ascii_image", "main"]

_RAMP = " .:-=+*#%@"
_HELP = ("answer: class name or number (#N = class number N, =NAME = class NAME) | s = skip | u = undo | redo | "
         "fix I LABEL = correct instance #I | +NAME = add class NAME | r = retrain | ? = help | q = quit "
         "(:q, :s, ... always mean the command)")
_COMMAND_WORDS = ("q", "quit", "exit", "?", "h", "help", "s", "u", "r", "redo", "fix")


def add_label_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``bayesal label`` (shared by ``python -m bayesal.cli.label``)."""
    parser.add_argument("--dataset", default=None,
                        help="built-in dataset (e.g. digits) or a features file (.npy/.npz/.parquet/.csv)")
    add_file_options(parser)
    parser.add_argument("--state-dir", default=None, help="directory of a new session (default: ./bayesal-label-<dataset>)")
    parser.add_argument("--resume", default=None, metavar="DIR", help="continue the session saved in DIR")
    parser.add_argument("--recover", action="store_true",
                        help="with --resume: rebuild a damaged session (label log or state file), keeping replaced files")
    parser.add_argument("--drop-damaged", action="store_true",
                        help="with --recover: for a label log damaged in the middle that no state file covers, "
                             "keep the events before the damage (the rest stays in labels.jsonl.damaged)")
    parser.add_argument("--strategy", default=None, help="query strategy (default margin; a resumed session keeps its own)")
    parser.add_argument("--batch", type=positive_int, default=1, help="instances queried at a time (default 1)")
    parser.add_argument("--oracle", action="store_true", help="answer with the dataset's true labels (scripted demo)")
    parser.add_argument("--max-labels", type=non_negative_int, default=None, help="stop after this many labels in this run (oracle default 20)")
    parser.add_argument("--seed", type=non_negative_int, default=0, help="random seed of a new session (default 0)")
    parser.add_argument("--retrain-every", type=non_negative_int, default=10, help="retrain the head after this many labels; 0 = never (default 10)")
    add_reselect_arguments(parser)
    parser.add_argument("--candidate-size", type=non_negative_int, default=1000, help="random candidates scored per query (default 1000)")
    parser.add_argument("--window", type=positive_int, default=10, help="labels spanned by the stopping signals (default 10)")
    add_stop_arguments(parser)
    add_items_arguments(parser)
    add_posterior_arguments(parser, default="cv; a resumed session keeps its own options")


# ------------------------------------------------------------------------------------ display
def ascii_image(img: np.ndarray, max_side: int = 32) -> str:
    """ASCII rendering of a small grayscale (H, W) or colour (H, W, 3) image; darker = denser glyph
    for images whose values grow with ink (as the digits do)."""
    a = np.asarray(img, dtype=np.float64)
    if a.ndim == 3:
        a = a.mean(axis=2 if a.shape[2] in (1, 3, 4) else 0)
    step = max(1, int(np.ceil(max(a.shape) / max_side)))
    a = a[::step, ::step]
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    scaled = np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo)
    idx = np.clip((scaled * (len(_RAMP) - 1)).round().astype(int), 0, len(_RAMP) - 1)
    return "\n".join("".join(_RAMP[v] * 2 for v in row).rstrip() for row in idx)


def render_item(item: Any, index: int, max_chars: int = 600) -> str:
    """Text for ``item``: the text itself, an ASCII rendering for 2-D/3-D arrays (images), else the pool index."""
    if isinstance(item, bytes):
        item = item.decode(errors="replace")
    if isinstance(item, str):
        return item if len(item) <= max_chars else item[:max_chars] + " …"
    if isinstance(item, np.ndarray):
        if item.ndim in (2, 3) and min(item.shape[:2]) >= 2 and np.issubdtype(item.dtype, np.number):
            return ascii_image(item)  # an image (downsampled to at most 32 pixels a side)
        return f"(instance #{index}: array of shape {item.shape})"
    if item is None:
        return f"(instance #{index})"
    text = repr(item)
    return text if len(text) <= max_chars else f"(instance #{index})"


def _top_classes(session: Any, index: int, k: int = 3) -> str:
    """The model's line for instance ``index``: its ``k`` most probable classes, or why it has no guess yet."""
    from bayesal.serve import model_guess

    probs = session.predict_proba([index])[0]
    guess = model_guess(probs, session.n_labeled, k=k, prior_informed=session.has_prior_mean)
    if guess.no_guess is not None:  # a uniform prediction: listing "top" classes would only repeat 1/C
        return f"no guess yet ({guess.no_guess}; every class {100 / probs.numel():.0f}%)"
    names = session.class_names
    return ", ".join(f"[{c}] {names[c]} {100 * p:.0f}%" for c, p in guess.top)


def estimate_line(est: dict[str, Any]) -> str:
    """One line of :meth:`~bayesal.labeling.session.Session.estimate`: the accuracy with its interval, the
    expected gain of the next labels and the stop recommendation."""
    how = (f"{est['n_audit']} audit labels" if est["method"] == "audit"
           else "the model's own, not honest after uncertainty sampling: use --audit-rate")
    gain = est["expected_gain"]
    gain_s = f"n/a until {est['gain_window']} labels" if gain != gain else f"{gain:+.4f}"
    line = (f"accuracy on the unlabeled pool {est['accuracy']:.3f} [{est['low']:.3f}, {est['high']:.3f}] "
            f"({100 * est['level']:.0f}% interval, {how}) | expected gain of the next {est['horizon']} labels: {gain_s}")
    if est["stop"]:
        line += f" < {est['stop_threshold']:g}: stop recommended"
    return line


def _write_stop(session: Any) -> None:
    """Leave the estimate and the stop recommendation in the session directory (``stop.json``)."""
    from bayesal.labeling import STOP_NAME, stop_summary

    if session.state_dir is not None:
        (Path(session.state_dir) / STOP_NAME).write_text(stop_summary(session), encoding="utf-8")


def _signals_line(sig: dict[str, Any], n_classes_labeled: int) -> str:
    if n_classes_labeled < 2:
        # one class seen: the model's confidence only says "everything is that class"
        return f"labels {sig['n_labels']} | stopping signals start once two classes are labeled"
    gain = sig["gain_per_label"]
    gain_s = "n/a" if gain != gain else f"{gain:+.4f}"
    span = sig["window_labels"]
    return (
        f"labels {sig['n_labels']} | model's estimate of its accuracy on the pool {sig['expected_accuracy']:.3f} | "
        f"gain/label over last {span}: {gain_s} | decision flips over last {span} labels: "
        f"{sig['flips']} of {sig['reference_size']} ({100 * sig['flip_rate']:.1f}%)"
    )


# ------------------------------------------------------------------------------------ main
def open_session(args: argparse.Namespace, out: TextIO) -> tuple[Any, Any]:
    """The session and data set that the labeling options in ``args`` name, shared by ``bayesal label``
    and ``bayesal serve``: a new session, ``--resume`` or ``--recover``; progress goes to ``out``."""
    from bayesal.data import file_loader_kwargs, list_datasets, load_dataset
    from bayesal.labeling import Session, read_session_header

    from .items import is_items_session, open_items_session

    if args.drop_damaged and not args.recover:
        raise InvalidInputError("--drop-damaged only applies with --recover")
    if getattr(args, "items", None) or (args.resume and is_items_session(read_session_header(Path(args.resume)).get("meta"))):
        return open_items_session(args, out)  # raw texts or images, embedded here
    if args.resume:
        state_dir = Path(args.resume)
        meta = _checked_meta(read_session_header(state_dir).get("meta", {}), state_dir)
        name, path = meta.get("dataset"), meta.get("dataset_path")
        if args.dataset and not path and name and args.dataset != name:
            raise InvalidInputError(f"{state_dir} is a session on dataset {name!r}, not {args.dataset!r}")
        if args.dataset and path and not Path(args.dataset).expanduser().is_file():
            raise InvalidInputError(f"{state_dir} is a session on the file {path}; --dataset must name that file "
                             f"(or where it has moved), not {args.dataset!r}")
        if args.dataset:
            source = args.dataset
        elif path:
            source = path
            if not Path(path).is_file():
                raise InvalidInputError(f"the session in {state_dir} was made from {path}, which no longer exists; "
                                 "pass --dataset with the file's new path")
        elif name:
            source = name
        else:
            raise InvalidInputError(f"the session in {state_dir} does not record its dataset; pass --dataset")
        # the feature hash in the log's header still guards against a different file's contents
        ds = load_dataset(source, **(meta.get("loader") or {}) if path else {})
        if args.recover:
            session = Session.recover(state_dir, ds.train_features, items=ds.train_items, strategy=args.strategy,
                                      drop_damaged=args.drop_damaged)
        else:
            try:
                session = Session.resume(state_dir, ds.train_features, items=ds.train_items, strategy=args.strategy)
            except CorruptStateError as err:  # resume names the Python remedy; say the command-line one
                raise CorruptStateError(f"{err} -- run again with --resume {state_dir} --recover to rebuild it") from err
        verb = "recovered" if args.recover else "resumed"
        print(f"{verb} session in {state_dir}: {session.n_labeled} labels, {len(session.skipped)} skipped", file=out)
        for note in session.recovery_notes:
            print(f"  {note}", file=out)
        return session, ds
    if args.recover:  # (--drop-damaged without --recover is refused above)
        raise InvalidInputError("--recover needs --resume DIR")
    if not args.dataset:
        raise InvalidInputError("pass --dataset NAME (or --resume DIR)")
    if args.batch < 1:
        raise InvalidInputError(f"--batch must be >= 1, got {args.batch}")
    loader = file_loader_kwargs(args)
    if args.state_dir:  # before loading (maybe featurising) the data: a file in the way, read-only
        check_writable_dir(args.state_dir, what="session directory (--state-dir)", create=False)
    ds = load_dataset(args.dataset, **loader)
    # the default name comes from the data (a file's name or a dataset header): never a path of its own
    state_dir = Path(args.state_dir or f"bayesal-label-{safe_name(ds.name)}")
    meta = {"dataset": ds.name}
    if args.dataset not in list_datasets():  # a user file: remember where it is and how it was read
        meta.update(dataset_path=str(Path(args.dataset).expanduser().resolve()), loader=loader)
    session = Session.from_dataset(
        ds,
        meta=meta,
        state_dir=state_dir,
        **session_settings(args),
    )
    print(f"new session in {state_dir} (resume with --resume {state_dir})", file=out)
    return session, ds


def _checked_meta(meta: Any, state_dir: Path) -> dict[str, Any]:
    """The data source a saved session names (written by this command): strings only, and only the
    loader options this command passes, so a session file cannot inject other loader arguments."""
    from bayesal.exceptions import CorruptStateError

    ok = isinstance(meta, dict) and all(isinstance(meta.get(k), (str, type(None))) for k in ("dataset", "dataset_path"))
    loader = meta.get("loader") if isinstance(meta, dict) else None
    ok = ok and (loader is None or (isinstance(loader, dict) and set(loader) <= {"label_column", "item_column"}
                                    and all(isinstance(v, str) for v in loader.values())))
    if not ok:
        raise CorruptStateError(f"the session in {state_dir} records its data source in an unexpected form; "
                                "pass --dataset with the data file")
    return meta


def label_main(args: argparse.Namespace, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """Run the labeling loop; returns the exit status (0 on quit / end of input / pool exhausted)."""
    inp = stdin if stdin is not None else sys.stdin
    out = stdout if stdout is not None else sys.stdout
    if args.batch < 1:
        raise InvalidInputError(f"--batch must be >= 1, got {args.batch}")
    session, ds = open_session(args, out)
    session.stop_when_gain_below = args.stop_when_gain_below
    names = session.class_names
    max_labels = args.max_labels if args.max_labels is not None else (20 if args.oracle else None)
    print(f"{ds.name}: {session.features.shape[0]} instances, classes: "
          + ", ".join(f"[{c}] {n}" for c, n in enumerate(names)), file=out)
    print(_HELP, file=out, flush=True)
    told = 0
    try:
        while max_labels is None or told < max_labels:
            batch = session.query(args.batch)
            if not batch:
                print("the pool is exhausted: every instance is labeled or skipped", file=out)
                break
            quit_now = False
            for idx in batch:
                if idx not in set(session.available_indices().tolist()):
                    continue
                items = session.items
                print("", file=out)
                print(f"--- instance #{idx} ({session.n_labeled} labeled) ---", file=out)
                print(render_item(items[idx] if items is not None else None, idx), file=out)
                print(f"model: {_top_classes(session, idx)}", file=out)
                action = _ask(session, idx, inp, out, ds if args.oracle else None, user=default_user(args),
                              class_prior=getattr(ds, "class_prior", None))
                if action == "quit":
                    quit_now = True
                    break
                if action == "told":
                    told += 1
                    signals = session.stopping_signals(window=args.window)
                    print(_signals_line(signals, len(set(session.labels.values()))), file=out, flush=True)
                    if len(set(session.labels.values())) >= 2:
                        print(estimate_line(session.estimate()), file=out, flush=True)
                    if max_labels is not None and told >= max_labels:
                        quit_now = True
                        break
                if action == "requery":
                    break
            if quit_now:
                break
    except StorageError as err:
        try:
            session.close()
        except OSError:
            pass
        raise StorageError(f"{err} (the {session.n_labeled} labels given before it are saved in {session.state_dir}; "
                           f"once there is space again, continue with --resume {session.state_dir})") from err
    except BaseException:
        session.close()
        raise
    try:
        _write_stop(session)
    finally:
        session.close()
    print(f"saved: {session.n_labeled} labels, {len(session.skipped)} skipped in {session.state_dir}", file=out, flush=True)
    return 0


def parse_answer(ans: str, names: list[str]) -> int | str:
    """A typed answer as a class name (``str``) or class number (``int``).

    ``#N`` is always class number N. Otherwise a class name wins; a bare number is a class number only
    when no class name is itself a number — with names such as ``"1" … "4"`` the answer ``0`` would be
    ambiguous, so it is an error that asks for the name or ``#N`` (names ``"0" … "9"`` that equal their
    numbers are not ambiguous).
    """
    ans = ans.strip()
    if ans.startswith("#") and ans[1:].isdigit():
        return int(ans[1:])
    if ans in names:
        return ans
    if ans.startswith("=") and ans[1:] in names:  # =NAME: always a class name (e.g. a class called "q")
        return ans[1:]
    if ans.lstrip("-").isdigit():
        if any(n.lstrip("-").isdigit() and n != str(c) for c, n in enumerate(names)):
            raise InvalidInputError(f"{ans!r} is not a class name, and the class names are numbers: type a name "
                             f"({', '.join(names[:10])}{' …' if len(names) > 10 else ''}) or #N for class number N")
        return int(ans)
    return ans  # an unknown name: Session.tell names the known ones


def _first_word(text: str) -> str:
    parts = text.split(maxsplit=1)
    return parts[0] if parts else ""


def _ask(session: Any, idx: int, inp: TextIO, out: TextIO, oracle_ds: Any, user: str | None = None,
         class_prior: Any = None) -> str:
    """Prompt until the instance is answered; returns 'told', 'skipped', 'requery' or 'quit'."""
    names = session.class_names
    while True:
        if oracle_ds is not None:
            label = int(oracle_ds.train_labels[idx])
            print(f"label> {names[label]}  (oracle)", file=out)
            session.tell(idx, label)
            return "told"
        print("label> ", end="", file=out, flush=True)
        line = inp.readline()
        if line == "":
            print("(end of input)", file=out)
            return "quit"
        ans = line.strip()
        if ans.startswith(":") and _first_word(ans[1:]) in _COMMAND_WORDS:
            ans = ans[1:]  # :q, :s, ... are always commands
        elif ans in names and _first_word(ans) in _COMMAND_WORDS:
            print(f"error: {ans!r} is both a class name and a command: type ={ans} for the class or :{ans} "
                  "for the command", file=out)
            continue
        if ans in ("q", "quit", "exit"):
            return "quit"
        if ans in ("", "?", "h", "help"):
            print(_HELP, file=out)
            continue
        try:
            if ans == "s":
                session.skip(idx)
                print(f"skipped #{idx}", file=out)
                return "skipped"
            if ans == "u":
                done = session.undo()
                what = done["op"] + (f" #{done['index']}" if "index" in done else "")
                print(f"undone: {what}", file=out)
                return "requery"
            if ans == "r":
                session.retrain()
                session.wait_refit()  # asked for: show the next instance under the refit head
                print(f"retrained the head on {session.n_labeled} labels", file=out)
                return "requery"
            if ans == "redo":
                done = session.redo()
                what = done["op"] + (f" #{done['index']}" if "index" in done else "")
                print(f"redone: {what}", file=out)
                return "requery"
            if ans.startswith("+") and ans[1:].strip() and ans not in names:
                # a zero-shot session embeds the new class's name for its row of the prior mean
                session.add_class(ans[1:], prior_row=None if class_prior is None else class_prior(ans[1:].strip()))
                print(f"added class [{session.num_classes - 1}] {session.class_names[-1]}", file=out)
                return "requery"
            if ans.split(maxsplit=1)[0] == "fix":
                parts = ans.split(maxsplit=2)
                if len(parts) != 3 or not parts[1].lstrip("#").isdigit():
                    raise InvalidInputError("usage: fix I LABEL (e.g. fix 12 sport) corrects the label of instance #I")
                target = int(parts[1].lstrip("#"))
                session.correct(target, parse_answer(parts[2], names), user=user)
                print(f"corrected #{target} to {names[session.labels[target]]!r}", file=out)
                return "requery"
            session.tell(idx, parse_answer(ans, names), user=user)
            print(f"labeled #{idx} as {names[session.labels[idx]]!r}", file=out)
            return "told"
        except ValueError as err:
            print(f"error: {err}", file=out)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m bayesal.cli.label``."""
    parser = Parser(prog="python -m bayesal.cli.label", description=__doc__.split("\n\n")[0])
    add_label_arguments(parser)
    parser.add_argument("--debug", action="store_true", help="on an error, print the full traceback as well")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
    return run_guarded(label_main, args, "bayesal label")


if __name__ == "__main__":
    sys.exit(main())

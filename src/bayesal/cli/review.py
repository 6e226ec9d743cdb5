"""``bayesal review DIR``: review the labels of a saved session in the terminal, most doubted first.

Each labeled item's given label is checked against all the *other* labels (the leave-one-out
predictive, :meth:`bayesal.labeling.session.Session.suspicious`). The command shows the item, its given
label and the model's view without that label, and reads the verdict from stdin — so it can be
scripted::

    printf '\\n3\\nq\\n' | bayesal review bayesal-label-digits

Answers: Enter keeps the label; a class name or number (``#N``, ``=NAME`` as in ``bayesal label``)
corrects it — a correction is the session's ``correct`` event, durably logged before the next item is
shown; ``?`` help; ``q`` quit (end of input quits too). Labels whose doubt is below ``--min-doubt`` are
not asked about.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from .arguments import non_negative_int
from .label import open_session, parse_answer, render_item

__all__ = ["add_review_arguments", "review_main"]

_HELP = ("Enter = keep the label | class name or number (#N = class number N, =NAME = class NAME) = correct it | "
         "? = help | q = quit")


def _doubt(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def add_review_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``bayesal review``."""
    parser.add_argument("dir", metavar="DIR", help="the session directory (of bayesal label or bayesal serve)")
    parser.add_argument("--dataset", default=None,
                        help="the session's dataset or features file, when it is not where the session recorded it")
    parser.add_argument("--min-doubt", type=_doubt, default=0.5,
                        help="ask only about labels the model doubts at least this much: a / (a + g) of the "
                             "probabilities the other labels give it (g) and the likeliest other class (a); "
                             "default 0.5: another class at least as likely")
    parser.add_argument("--max-items", type=non_negative_int, default=None, help="stop after this many items")


def _view(session: Any, row: dict[str, Any], k: int = 3) -> str:
    names = session.class_names
    order = sorted(range(len(row["probs"])), key=lambda c: -row["probs"][c])[:k]
    return ", ".join(f"[{c}] {names[c]} {100 * row['probs'][c]:.0f}%" for c in order)


def review_main(args: argparse.Namespace, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    """Run the review loop; returns the exit status (0 on quit, end of input or nothing left to review)."""
    inp = stdin if stdin is not None else sys.stdin
    out = stdout if stdout is not None else sys.stdout
    opening = argparse.Namespace(resume=args.dir, dataset=args.dataset, recover=False, drop_damaged=False,
                                 strategy=None)
    session, _ = open_session(opening, out)
    reviewed: set[int] = set()
    kept = corrected = 0
    try:
        print(f"{session.n_labeled} labels; most doubted first (doubt ≥ {args.min_doubt:g})", file=out)
        print(_HELP, file=out, flush=True)
        while args.max_items is None or len(reviewed) < args.max_items:
            top = session.suspicious(1, exclude=reviewed)
            if not top or top[0]["doubt"] < args.min_doubt:
                print("no label left to review", file=out)
                break
            row = top[0]
            i = row["index"]
            items = session.items
            print("", file=out)
            print(f"--- instance #{i} (doubt {100 * row['doubt']:.0f}%) ---", file=out)
            print(render_item(items[i] if items is not None else None, i), file=out)
            print(f"given label: [{row['label_index']}] {row['label']}", file=out)
            print(f"model, from the other labels: {_view(session, row)}", file=out)
            verdict = _ask(session, i, inp, out)
            if verdict == "quit":
                break
            reviewed.add(i)
            kept += verdict == "kept"
            corrected += verdict == "corrected"
    finally:
        session.close()
    print(f"reviewed {len(reviewed)}: {kept} kept, {corrected} corrected; saved in {session.state_dir}", file=out,
          flush=True)
    return 0


def _ask(session: Any, index: int, inp: TextIO, out: TextIO) -> str:
    """Prompt until the label of ``index`` is kept or corrected; returns 'kept', 'corrected' or 'quit'."""
    names = session.class_names
    while True:
        print("keep [Enter] or correct> ", end="", file=out, flush=True)
        line = inp.readline()
        if line == "":
            print("(end of input)", file=out)
            return "quit"
        ans = line.strip()
        if ans in ("q", ":q", "quit", "exit") and ans not in names:
            return "quit"
        if ans in ("?", "h", "help") and ans not in names:
            print(_HELP, file=out)
            continue
        if ans == "":
            print(f"kept #{index} as {names[session.labels[index]]!r}", file=out)
            return "kept"
        try:
            old = session.labels[index]
            session.correct(index, parse_answer(ans, names))
        except ValueError as err:  # an unknown class: say so and ask again
            print(f"error: {err}", file=out)
            continue
        new = session.labels[index]
        if new == old:
            print(f"kept #{index} as {names[new]!r}", file=out)
            return "kept"
        print(f"corrected #{index}: {names[old]!r} -> {names[new]!r}", file=out)
        return "corrected"

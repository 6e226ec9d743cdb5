"""Labeling raw items (``bayesal label|serve --items PATH --classes a,b,c``): open or resume the session.

The items — a table of texts, a ``.txt`` file or a folder of images — are embedded by a built-in
backbone into shards inside the session folder (reused on resume), and the session's header records
where they came from and how they were read and embedded, so ``--resume DIR`` needs nothing else.
Labels the source already holds (``--label-column``, or subfolders named after classes) become the
session's first answers, logged like any other. Nothing is held out unless ``--test-size`` asks:
then that share of the already labeled items is kept out of the pool to measure the accuracy.

A text session's head starts from a zero-shot guess: the class names (and descriptions) embedded by the
same backbone give the mean of its prior (:func:`bayesal.data.zero_shot_head`), saved in the header, so the
first item already has a suggestion; ``--no-zero-shot`` keeps the zero-mean prior.
"""

from __future__ import annotations

import argparse
import getpass
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from bayesal.exceptions import CorruptStateError, InvalidInputError, SessionExistsError

__all__ = ["add_items_arguments", "ItemsData", "is_items_session", "open_items_session", "default_user",
           "load_raw_for_session", "pool_rows"]

IMPORT_USER = "import"  # the annotator of the labels that came with the items


def _test_size(text: str) -> float | int:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1) or a count, got {text!r}") from None
    if 0 < value < 1:
        return value
    if value >= 1 and value == int(value):
        return int(value)
    raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1) or a whole count >= 1, got {text}")


def add_items_arguments(parser: argparse.ArgumentParser) -> None:
    """``--items`` and its options (``bayesal label`` and ``bayesal serve``; ``--label-column`` is shared
    with ``--dataset``)."""
    group = parser.add_argument_group("raw items (label your own texts or images)")
    group.add_argument("--items", default=None, metavar="PATH",
                       help="items to label: a .csv/.tsv/.parquet/.jsonl table with a text column, a .txt file "
                            "(one item per line) or a folder of images (.png/.jpg/.webp/.bmp, subfolders too)")
    group.add_argument("--classes", default=None, metavar="A,B,C", help="with --items: the class names")
    group.add_argument("--classes-file", default=None, metavar="FILE",
                       help="with --items: the classes, one per line ('name' or 'name: description')")
    group.add_argument("--text-column", default=None, help="with --items: the table's text column (default: detected)")
    group.add_argument("--backbone", default=None,
                       help="with --items: the embedding model (text: minilm; images: efficientnet-lite0 (default), "
                            "efficientnet-lite2)")
    group.add_argument("--no-zero-shot", action="store_true",
                       help="with --items of texts: start the head from the zero-mean prior instead of the zero-shot "
                            "guess of the class names (and descriptions) embedded by the same backbone")
    group.add_argument("--test-size", type=_test_size, default=None,
                       help="with --items: hold out this share (or count) of the already labeled items to measure "
                            "the accuracy (default: nothing held out)")
    group.add_argument("--user", default=None, help="the annotator's name saved with each answer (default: the login "
                                                     "name in the terminal, the tab's id in the browser)")


@dataclass
class ItemsData:
    """What the labeling commands need of the items besides the session: a name, the held-out split,
    and per pool position the item id and its text or file path (for the exports)."""

    name: str
    item_ids: list[str]
    item_locations: list[str]
    test_features: np.ndarray | None = None
    test_labels: np.ndarray | None = None
    train_labels: Any = None  # no true labels: --oracle does not apply
    meta: dict[str, Any] = field(default_factory=dict)
    #: A zero-shot session's row of the prior mean for a class added later (its name embedded), else None.
    class_prior: Callable[[str], np.ndarray] | None = None


def default_user(args: argparse.Namespace) -> str | None:
    """The annotator of ``bayesal label``: ``--user``, else the login name (None if unknown)."""
    if getattr(args, "user", None):
        return str(args.user)
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no login name (e.g. a container without a passwd entry)
        return None


def is_items_session(meta: Any) -> bool:
    """Whether a session header's ``meta`` records raw items."""
    return isinstance(meta, dict) and isinstance(meta.get("items"), dict)


def _checked_source(meta: dict[str, Any], state_dir: Path) -> dict[str, Any]:
    src = meta["items"]
    strings = ("path", "kind", "backbone", "text_column", "label_column")
    ok = (all(isinstance(src.get(k), (str, type(None))) for k in strings) and isinstance(src.get("path"), str)
          and src.get("kind") in ("text", "image")
          and (src.get("test_size") is None or isinstance(src["test_size"], (int, float))))
    if not ok:
        raise CorruptStateError(f"the session in {state_dir} records its items in an unexpected form")
    return src


def _split(labels: Sequence[str | None], class_names: list[str], test_size: float | int | None,
           seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the pool and of the held-out split: ``test_size`` of the labeled rows (stratified)."""
    n = len(labels)
    if test_size is None:
        return np.arange(n), np.arange(0)
    from bayesal.data import split_indices

    labeled = np.array([i for i, v in enumerate(labels) if v is not None], dtype=np.int64)
    if labeled.size < 2:
        raise InvalidInputError("--test-size holds out already labeled items, and the items have fewer than 2 labels "
                                "(pass --label-column, or leave --test-size out)")
    codes = np.array([class_names.index(str(labels[i])) for i in labeled], dtype=np.int64)
    _, te = split_indices(codes, test_size, seed)
    test = np.sort(labeled[te])
    return np.setdiff1d(np.arange(n), test), test


def load_raw_for_session(src: dict[str, Any], class_names: list[str]) -> Any:
    """The items a session's header names, read again the same way."""
    from bayesal.data import read_items

    path = Path(src["path"])
    if not path.exists():
        raise InvalidInputError(f"the session's items {path} no longer exist; move them back to resume it")
    return read_items(path, text_column=src.get("text_column"), label_column=src.get("label_column"),
                      classes=class_names)


def pool_rows(raw: Any, src: dict[str, Any], class_names: list[str]) -> tuple[list[str], list[str]]:
    """Per pool position of a session over ``raw``: the item id and its text or file path."""
    pool, _ = _split(raw.labels, class_names, src.get("test_size"), int(src.get("seed", 0)))
    _, ids, locations = _pool_items(raw, pool)
    return ids, locations


def _pool_items(raw: Any, rows: np.ndarray) -> tuple[Any, list[str], list[str]]:
    locations = raw.locations()
    # images with their thumbnails (made by embed_items, which runs first)
    return raw.display_items(rows), [raw.ids[i] for i in rows], [locations[i] for i in rows]


def open_items_session(args: argparse.Namespace, out: TextIO) -> tuple[Any, ItemsData]:
    """The session over ``--items`` (new) or over the items a resumed session records."""
    from bayesal.data import (
        ClassList,
        backbone_name,
        class_texts,
        embed_items,
        items_backbone,
        read_classes,
        read_items,
        zero_shot_head,
    )
    from bayesal.labeling import LOG_NAME, Session, read_session_header
    from bayesal.utils import check_writable_dir, safe_name

    from .arguments import session_settings

    if getattr(args, "oracle", False):
        raise InvalidInputError("--oracle answers with true labels, which raw --items do not have")
    if args.resume and getattr(args, "items", None):
        raise InvalidInputError("pass --items for a new session or --resume DIR (which knows its items), not both")
    if args.resume:
        state_dir = Path(args.resume)
        meta = read_session_header(state_dir).get("meta", {})
        src = _checked_source(meta, state_dir)
        header_names = list(read_session_header(state_dir).get("class_names", []))
        raw = load_raw_for_session(src, header_names)
        if raw.digest() != src.get("digest"):  # before embedding: the labels name items by position
            raise InvalidInputError(f"the items in {raw.source} changed since the session in {state_dir} was made "
                                    "(its labels name items by position); restore them, or label the changed items "
                                    "in a new session")
        backbone = items_backbone(raw.kind, src.get("backbone"))
        feats = embed_items(raw, backbone, state_dir / "embeddings")
        pool, test = _split(raw.labels, header_names, src.get("test_size"), int(src.get("seed", 0)))
        display, ids, locations = _pool_items(raw, pool)
        opener = Session.recover if args.recover else Session.resume
        kwargs = {"drop_damaged": args.drop_damaged} if args.recover else {}
        try:
            session = opener(state_dir, feats[pool], items=display, strategy=args.strategy, **kwargs)
        except CorruptStateError as err:
            raise CorruptStateError(f"{err} -- run again with --resume {state_dir} --recover to rebuild it") from err
        verb = "recovered" if args.recover else "resumed"
        print(f"{verb} session in {state_dir}: {session.n_labeled} labels, {len(session.skipped)} skipped", file=out)
        for note in session.recovery_notes:
            print(f"  {note}", file=out)
    else:
        if args.recover:
            raise InvalidInputError("--recover needs --resume DIR")
        if args.dataset:
            raise InvalidInputError("pass --items (raw texts or images) or --dataset (features), not both")
        classes = read_classes(args.classes, args.classes_file)
        raw = read_items(args.items, text_column=args.text_column, label_column=args.label_column,
                         classes=classes.names or None)
        names = classes.names
        given = sorted({v for v in raw.labels if v is not None})
        if not names:
            if raw.kind == "image" and raw.info.get("subfolders"):
                names = list(raw.info["subfolders"])
                raw = read_items(args.items, classes=names)
            else:
                names = given
            if len(names) < 2:
                raise InvalidInputError("name the classes: --classes a,b,c (or --classes-file, one per line)")
            print(f"classes from the {'subfolders' if raw.kind == 'image' else 'labels'}: {', '.join(names)}", file=out)
        if len(names) < 2:
            raise InvalidInputError(f"at least 2 classes are needed, got {names}")
        unknown = sorted({v for v in raw.labels if v is not None} - set(names))
        if unknown:
            raise InvalidInputError(f"the label column holds {unknown[:5]}, which are not among the classes {names[:20]}; "
                                    "add them to --classes or fix the labels")
        state_dir = Path(args.state_dir or f"bayesal-label-{safe_name(raw.source.stem)}")
        check_writable_dir(state_dir, what="session directory (--state-dir)", create=False)
        if (state_dir / LOG_NAME).exists() and (state_dir / LOG_NAME).stat().st_size > 0:  # before embedding
            raise SessionExistsError(f"{state_dir} already holds a labeling session; resume it with --resume "
                                     f"{state_dir} or choose another --state-dir")
        bname = backbone_name(raw.kind, args.backbone)
        backbone = items_backbone(raw.kind, bname)
        print(f"embedding {len(raw)} {'texts' if raw.kind == 'text' else 'images'} with {backbone.name} "
              f"(once; kept in {state_dir / 'embeddings'})", file=out, flush=True)
        feats = embed_items(raw, backbone, state_dir / "embeddings")
        pool, test = _split(raw.labels, names, args.test_size, args.seed)
        display, ids, locations = _pool_items(raw, pool)
        src = {"path": str(raw.source), "kind": raw.kind, "backbone": bname, "backbone_config": backbone.config(),
               "text_column": raw.info.get("text_column"), "label_column": raw.info.get("label_column"),
               "test_size": args.test_size, "seed": args.seed, "digest": raw.digest(), "n_items": len(raw)}
        if any(d for d in classes.descriptions):
            src["descriptions"] = [d or "" for d in classes.descriptions]
        prior_mean = None
        if raw.kind == "text" and not getattr(args, "no_zero_shot", False) and backbone.logit_scale is not None:
            # the names as given (with their descriptions), or those the labels named
            zs_classes = classes if classes.names == names else ClassList(names, [None] * len(names))
            prior_mean = zero_shot_head(zs_classes, backbone)
            src["zero_shot"] = {"scale": backbone.logit_scale, "texts": class_texts(zs_classes)}
        session = Session(
            feats[pool], names, items=display,
            meta={"dataset": raw.source.name, "items": src},
            state_dir=state_dir,
            **session_settings(args),
            cold_start="cover",  # from zero labels: typical, diverse items until every class has one
            prior_mean=prior_mean,
        )
        try:
            n_given = _import_labels(session, raw.labels, pool)
        except BaseException:
            session.close()
            raise
        print(f"new session in {state_dir} (resume with --resume {state_dir})"
              + (f"; {n_given} labels from the items" if n_given else ""), file=out)
    test_labels = None
    if test.size:
        test_labels = np.array([header_index(session.class_names, raw.labels[i]) for i in test], dtype=np.int64)
    zs = src.get("zero_shot")
    class_prior = None
    if session.has_prior_mean and isinstance(zs, dict) and isinstance(zs.get("scale"), (int, float)):
        def class_prior(name: str) -> np.ndarray:
            return zero_shot_head(ClassList([name], [None]), backbone, scale=float(zs["scale"]))[0]
    data = ItemsData(name=raw.source.name, item_ids=ids, item_locations=locations,
                     test_features=feats[test] if test.size else None, test_labels=test_labels, class_prior=class_prior)
    return session, data


def header_index(names: list[str], label: str | None) -> int:
    if label is None or label not in names:
        raise InvalidInputError(f"held-out item has label {label!r}, not one of the classes")
    return names.index(label)


def _import_labels(session: Any, labels: Sequence[str | None], pool: np.ndarray) -> int:
    """Log the labels the items came with as the session's first answers (annotator ``import``)."""
    n = 0
    for k, i in enumerate(pool):
        if labels[i] is not None:
            session.tell(k, labels[i], user=IMPORT_USER)
            n += 1
    return n

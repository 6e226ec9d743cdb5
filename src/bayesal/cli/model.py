"""``bayesal export`` (a session's labels, and optionally its model, without a server) and ``bayesal
predict`` (a labeled model applied to new items)::

    bayesal export my-labels --out labels.csv             # index,label,label_index,item,id,annotator,time,label_doubt
    bayesal export my-labels --model model.pt             # also the model (posterior, classes, backbone)
    bayesal predict --model my-labels new.csv --out preds.csv   # or --model model.pt; or a folder of images

A model records the backbone that made its features and how (the session's ``meta``), so ``predict``
embeds the new items the same way and writes, per item, its id, text or file path, the most probable
class and every class's probability (the posterior's mean-field predictive).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

from bayesal.exceptions import InvalidInputError

__all__ = ["add_export_arguments", "export_main", "add_predict_arguments", "predict_main"]


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("state_dir", metavar="DIR", help="the session directory")
    parser.add_argument("--out", default=None,
                        help="labels file: .csv (default DIR/labels.csv) or .jsonl; - for standard output")
    parser.add_argument("--model", default=None, metavar="FILE",
                        help="also write the model (torch.save of the posterior, classes and backbone) to FILE; "
                             "opens the session, so not while a server holds it")


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("items", metavar="PATH", help="items to predict: a text table, a .txt file or a folder of images")
    parser.add_argument("--model", required=True, metavar="DIR|FILE",
                        help="a session directory made with --items, or a model file from bayesal export --model "
                             "(or the web app's posterior.pt)")
    parser.add_argument("--out", default="predictions.csv", help="output CSV (default predictions.csv; - for standard output)")
    parser.add_argument("--text-column", default=None, help="the table's text column (default: detected)")


def _items_context(header: dict[str, Any]) -> tuple[list[str] | None, list[str] | None]:
    """Per pool position the item id and text or path of an items session (None for other sessions)."""
    from .items import is_items_session, load_raw_for_session, pool_rows

    meta = header.get("meta") or {}
    if not is_items_session(meta):
        return None, None
    src = meta["items"]
    raw = load_raw_for_session(src, list(header["class_names"]))
    return pool_rows(raw, src, list(header["class_names"]))


def _open_for_model(state_dir: str) -> Any:
    """The session in ``state_dir``, opened as ``--resume`` does (the caller closes it)."""
    from .label import open_session

    args = argparse.Namespace(resume=state_dir, recover=False, drop_damaged=False, strategy=None, dataset=None,
                              items=None, oracle=False, batch=1)
    session, _ = open_session(args, sys.stderr)
    return session


def _write(text: str, out: str) -> None:
    if out == "-":
        sys.stdout.write(text)
        return
    from bayesal.utils import atomic_write

    atomic_write(Path(out), lambda fh: fh.write(text.encode("utf-8")), permissions=0o644)


def export_main(args: argparse.Namespace) -> int:
    """Entry point of ``bayesal export``."""
    from bayesal.labeling import format_labels, label_rows, logged_history, model_payload

    header, history = logged_history(Path(args.state_dir))
    ids, locations = _items_context(header)
    rows = label_rows(history, list(header["class_names"]), ids=ids, items=locations)
    out = args.out or str(Path(args.state_dir) / "labels.csv")
    _write(format_labels(rows, "jsonl" if out.endswith((".jsonl", ".ndjson")) else "csv"), out)
    if out != "-":
        print(f"wrote {len(rows)} labels to {out}", file=sys.stderr)
    if args.model:
        import io

        import torch

        session = _open_for_model(args.state_dir)
        try:
            session.wait_refit()
            payload = model_payload(session)
        finally:
            session.close()
        buf = io.BytesIO()
        torch.save(payload, buf)
        _write_bytes(buf.getvalue(), args.model)
        print(f"wrote the model ({payload['n_labeled']} labels) to {args.model}", file=sys.stderr)
    return 0


def _write_bytes(data: bytes, out: str) -> None:
    from bayesal.utils import atomic_write

    atomic_write(Path(out), lambda fh: fh.write(data), permissions=0o644)


def _load_model(model: str) -> dict[str, Any]:
    """A model payload: from a file, or from a session directory (opened as ``--resume`` does)."""
    import torch

    from bayesal.labeling import model_payload

    p = Path(model)
    if p.is_dir():
        session = _open_for_model(model)
        try:
            session.wait_refit()
            return model_payload(session)
        finally:
            session.close()
    if not p.is_file():
        raise InvalidInputError(f"--model {model}: no such session directory or model file")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a file that is not a model
        raise InvalidInputError(f"--model {model} is not a model file ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or not {"posterior", "class_names", "config"} <= set(payload):
        raise InvalidInputError(f"--model {model} is not a bayesal model (a file from bayesal export --model)")
    return payload


def predict_main(args: argparse.Namespace) -> int:
    """Entry point of ``bayesal predict``."""
    import torch

    from bayesal.data import items_backbone, read_items
    from bayesal.laplace import LastLayerLaplace

    payload = _load_model(args.model)
    meta = (payload.get("config") or {}).get("meta") or {}
    src = meta.get("items") if isinstance(meta, dict) else None
    if not isinstance(src, dict) or not isinstance(src.get("backbone"), str):
        raise InvalidInputError(f"--model {args.model} was trained on a features dataset, not on embedded items: "
                                "predict needs a model from a session made with --items")
    raw = read_items(args.items, text_column=args.text_column)
    if raw.kind != src.get("kind"):
        raise InvalidInputError(f"the model labels {src.get('kind')} items, but {args.items} holds {raw.kind} items")
    backbone = items_backbone(raw.kind, src["backbone"])
    saved = src.get("backbone_config")
    if isinstance(saved, dict) and saved != backbone.config():
        print(f"warning: the backbone differs from the one the model was trained with ({saved} vs "
              f"{backbone.config()})", file=sys.stderr)
    if raw.kind == "text":
        feats = backbone.encode(list(raw.texts or []))
    else:
        from bayesal.data import ImageFiles

        images = ImageFiles(raw.paths or [], size=int(getattr(backbone, "resolution", 112)))
        feats = np.concatenate([backbone.encode(images[s:s + 256]) for s in range(0, len(images), 256)])
    posterior = LastLayerLaplace.from_state_dict(payload["posterior"])
    probs = posterior.predict_proba(torch.as_tensor(feats, dtype=torch.float64)).numpy()
    names = list(payload["class_names"])
    _write(_predictions_csv(raw.ids, raw.locations(), names, probs), args.out)
    if args.out != "-":
        print(f"wrote {len(raw)} predictions to {args.out}", file=sys.stderr)
    return 0


def _predictions_csv(ids: list[str], items: list[str], names: list[str], probs: np.ndarray) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "item", "prediction", "probability", *[f"p_{n}" for n in names]])
    for i, (id_, item) in enumerate(zip(ids, items)):
        c = int(np.argmax(probs[i]))
        w.writerow([id_, item, names[c], f"{probs[i, c]:.4f}", *[f"{p:.4f}" for p in probs[i]]])
    return buf.getvalue()

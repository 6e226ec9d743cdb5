"""Labeling your own raw data from zero labels: a CSV of texts and a folder of images.

Built from the built-in data with the labels kept aside to answer: ``--n-texts`` BBC News articles
written to a CSV (``id,text``) and ``--n-images`` Animal-MNIST images written as PNG files into a
folder. Each is opened as ``bayesal serve --items ... --classes ...`` does (in process: the same
:func:`bayesal.cli.serve.build_service`), then answered with the true labels through the labeling
service, as the web app's answers are:

- ``first_item_s``: from the command to the first item to show, for the texts (reading, embedding
  with MiniLM on this machine's CPU, the session, the first query);
- ``embed_items_per_s``: texts embedded per second (MiniLM, from the shards' own timing);
- ``zero_shot_acc``: accuracy on the texts of the session's own prediction before the first answer:
  the zero-shot prior (the class names embedded by the same backbone, ``s · cos`` logits, see
  docs/method.md) is the model then;
- ``acc_at_20``: accuracy on the texts not yet labeled after 20 answers (after the refit at 20);
- ``key_to_next_p50_ms``: the median time from an answer to the next item (Bayesian update, durable
  log line, next query), the larger of the texts' and the images';
- ``lost``: acknowledged answers missing after closing and resuming both sessions.

The machine is shared (2 cores, other jobs running): absolute times are noisy. Last line::

    first_item_s= embed_items_per_s= zero_shot_acc= acc_at_20= key_to_next_p50_ms= lost=

    python benchmarks/own_data.py [--n-texts 2000] [--n-images 2000] [--labels 20]
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bayesal.cli.commands import build_parser
from bayesal.cli.serve import build_service
from bayesal.data import load_dataset


def texts_csv(n: int, out: Path) -> tuple[Path, list[str], list[str]]:
    """BBC News texts (train then test split) as ``id,text``; the class of each row, kept aside."""
    ds = load_dataset("bbcnews")
    items = list(ds.train_items) + list(ds.test_items)
    labels = [ds.class_names[c] for c in np.concatenate([ds.train_labels, ds.test_labels])]
    rows = np.random.default_rng(0).permutation(len(items))[:n]
    path = out / "texts.csv"
    pd.DataFrame({"id": [f"t{i}" for i in rows], "text": [items[i] for i in rows]}).to_csv(path, index=False)
    return path, [labels[i] for i in rows], list(ds.class_names)


def image_folder(n: int, out: Path) -> tuple[Path, list[str], list[str]]:
    """Animal-MNIST images as PNG files (sorted names = the order read back); their classes, kept aside."""
    from PIL import Image

    ds = load_dataset("animals")
    rows = np.random.default_rng(0).permutation(len(ds.train_items))[:n]
    root = out / "images"
    root.mkdir()
    for k, i in enumerate(rows):
        Image.fromarray(np.asarray(ds.train_items[i], dtype=np.uint8)).save(root / f"{k:06d}.png")
    return root, [ds.class_names[ds.train_labels[i]] for i in rows], list(ds.class_names)


def label_session(items: Path, truth: list[str], classes: list[str], state: Path, n_labels: int) -> dict[str, float]:
    """Open ``items`` as ``bayesal serve --items`` does, answer ``n_labels`` items with the truth."""
    argv = ["serve", "--items", str(items), "--classes", ",".join(classes), "--state-dir", str(state)]
    t0 = time.perf_counter()
    svc = build_service(build_parser().parse_args(argv), io.StringIO())
    card = svc.next_item("bench")
    first = time.perf_counter() - t0
    guess = svc.session.predict_proba(range(len(truth))).argmax(1).numpy()  # before any answer: the prior's
    zero_shot = float(np.mean([classes[p] == t for p, t in zip(guess, truth)]))
    pool_truth = truth  # nothing held out: the pool is the rows (the sorted files) in order
    acked: dict[int, str] = {}
    waits = []
    for _ in range(n_labels):
        i = card["index"]
        t = time.perf_counter()
        card = svc.answer(i, pool_truth[i], "bench")["next"]
        waits.append(time.perf_counter() - t)
        acked[i] = pool_truth[i]
    svc.session.wait_refit()
    rest = np.array(sorted(set(range(len(pool_truth))) - set(acked)))
    pred = svc.session.predict_proba(rest.tolist()).argmax(1).numpy()
    acc = float(np.mean([classes[p] == pool_truth[r] for p, r in zip(pred, rest)]))
    svc.close()
    again = build_service(build_parser().parse_args(["serve", "--resume", str(state)]), io.StringIO())
    kept = {i: again.session.class_names[c] for i, c in again.session.labels.items()}
    again.close()
    lost = sum(kept.get(i) != v for i, v in acked.items())
    timing = json.loads(next((state / "embeddings").iterdir()).joinpath("timing.json").read_text())
    return {"first_item_s": first, "embed_per_s": timing["rows_last_run"] / timing["seconds_last_run"],
            "acc": acc, "p50_ms": 1000 * float(np.median(waits)), "lost": lost, "zero_shot": zero_shot}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-texts", type=int, default=2000)
    ap.add_argument("--n-images", type=int, default=2000)
    ap.add_argument("--labels", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        path, truth, classes = texts_csv(args.n_texts, out)
        text = label_session(path, truth, classes, out / "texts-labels", args.labels)
        zs = text["zero_shot"]
        print(f"texts: {args.n_texts} items, first item {text['first_item_s']:.1f}s, {text['embed_per_s']:.1f} items/s, "
              f"key->next p50 {text['p50_ms']:.1f} ms, accuracy at {args.labels}: {text['acc']:.3f}, zero-shot {zs:.3f}")
        root, itruth, iclasses = image_folder(args.n_images, out)
        img = label_session(root, itruth, iclasses, out / "images-labels", args.labels)
        print(f"images: {args.n_images} items, first item {img['first_item_s']:.1f}s, {img['embed_per_s']:.1f} items/s, "
              f"key->next p50 {img['p50_ms']:.1f} ms, accuracy at {args.labels}: {img['acc']:.3f}")
    print(f"first_item_s={text['first_item_s']:.1f} embed_items_per_s={text['embed_per_s']:.1f} zero_shot_acc={zs:.3f} "
          f"acc_at_20={text['acc']:.3f} key_to_next_p50_ms={max(text['p50_ms'], img['p50_ms']):.1f} "
          f"lost={text['lost'] + img['lost']}")


if __name__ == "__main__":
    main()

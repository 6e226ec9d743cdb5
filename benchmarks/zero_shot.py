"""The zero-shot prior of text sessions: accuracy before any label and after a few, with and without it.

For each built-in text data set (MiniLM features from the cache), the class names — and, where given
below, one-line descriptions, as a ``--classes-file`` holds them — are embedded by the same backbone and
scaled by its logit scale (:func:`bayesal.data.zero_shot_head`): the mean ``M₀`` of the head's prior, as
``bayesal label|serve --items`` sets it. Measured on the data set's test split:

- ``zero_shot_acc`` / ``zero_shot_nll``: the posterior with no labels (mean ``M₀``; the mean-field
  predictive), against chance ``1/C``;
- ``acc@n`` for n random labels from the training split (``--seeds`` draws; the same draws with and
  without the prior): the default posterior (λ₀ and the spread by cross-validation, the exact MAP head)
  fitted with ``prior_mean=M₀`` (``prior``) and without (``zero``), mean ± standard deviation over draws.

Rotten Tomatoes is used only when its MiniLM features are complete in the cache (embedding its 13,905
texts takes most of an hour on two cores); otherwise it is skipped with a note.

    python benchmarks/zero_shot.py [--datasets bbcnews,rotten_tomatoes] [--labels 5,10,20] [--seeds 10]
                                   [--scales 20]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from bayesal.data import ClassList, cache_dir, get_backbone, load_dataset, zero_shot_head
from bayesal.laplace import LastLayerLaplace

#: Descriptions a user might write in a classes file (only where the bare names say little).
DESCRIPTIONS = {
    "rotten_tomatoes": {"fresh": "a positive movie review", "plot": "a summary of a movie's plot",
                        "rotten": "a negative movie review"},
}
SIZES = {"rotten_tomatoes": 13_905}


def cached(name: str) -> bool:
    """Whether the MiniLM features of a large built-in data set are complete in the cache (no embedding)."""
    if name not in SIZES:
        return True
    for folder in cache_dir().glob(f"{name}__minilm-l6-v2-s128__*"):
        try:
            manifest = json.loads((folder / "manifest.json").read_text())
            rows = sum(np.load(f, mmap_mode="r").shape[0] for f in folder.glob("shard-*.npy"))
        except (OSError, ValueError):
            continue
        if manifest.get("n_items") == SIZES[name] and rows == SIZES[name]:
            return True
    return False


def scores(post: LastLayerLaplace, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    p = post.predict_proba(x)
    acc = float((p.argmax(1) == y).double().mean())
    nll = float(-torch.log(p[torch.arange(len(y)), y].clamp_min(1e-300)).mean())
    return acc, nll


def run(name: str, labels: list[int], seeds: int, scales: list[float | None]) -> None:
    t0 = time.perf_counter()
    ds = load_dataset(name, progress=False)
    x = torch.as_tensor(ds.train_features, dtype=torch.float64)
    y = torch.as_tensor(ds.train_labels)
    xt = torch.as_tensor(ds.test_features, dtype=torch.float64)
    yt = torch.as_tensor(ds.test_labels)
    c = len(ds.class_names)
    bb = get_backbone("minilm", max_seq_length=128)
    variants = [("names", ClassList(list(ds.class_names), [None] * c))]
    if name in DESCRIPTIONS:
        variants.append(("names+descriptions",
                         ClassList(list(ds.class_names), [DESCRIPTIONS[name].get(n) for n in ds.class_names])))
    print(f"\n{name}: C={c}, pool {len(y)}, test {len(yt)}, chance {1 / c:.3f}")
    draws = {n: [torch.randperm(len(y), generator=torch.Generator().manual_seed(s))[:n] for s in range(seeds)]
             for n in labels}
    zero = {n: [scores(LastLayerLaplace(random_state=s).fit(x[i], y[i], num_classes=c), xt, yt)[0]
                for s, i in enumerate(draws[n])] for n in labels}
    print("  zero-mean prior:    " + "  ".join(f"acc@{n} {np.mean(a):.3f}±{np.std(a):.3f}" for n, a in zero.items()))
    for label, classes in variants:
        for scale in scales:
            m0 = torch.as_tensor(zero_shot_head(classes, bb, scale=scale))
            s_used = bb.logit_scale if scale is None else scale
            empty = LastLayerLaplace(prior_mean=m0).fit(x[:0], y[:0], num_classes=c)
            acc0, nll0 = scores(empty, xt, yt)
            line = f"  {label} (s={s_used:g}): zero_shot_acc {acc0:.3f} zero_shot_nll {nll0:.3f}"
            for n in labels:
                a = [scores(LastLayerLaplace(random_state=s, prior_mean=m0).fit(x[i], y[i], num_classes=c), xt, yt)[0]
                     for s, i in enumerate(draws[n])]
                line += f"  acc@{n} {np.mean(a):.3f}±{np.std(a):.3f}"
            print(line, flush=True)
    print(f"  ({time.perf_counter() - t0:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="bbcnews,rotten_tomatoes")
    parser.add_argument("--labels", default="5,10,20")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--scales", default="", help="logit scales to try (default: the backbone's own)")
    args = parser.parse_args()
    labels = [int(v) for v in args.labels.split(",")]
    scales: list[float | None] = [float(v) for v in args.scales.split(",")] if args.scales else [None]
    for name in args.datasets.split(","):
        if not cached(name):
            print(f"\n{name}: skipped (its MiniLM features are not complete in {cache_dir()}; embedding them takes "
                  "most of an hour here)")
            continue
        run(name, labels, args.seeds, scales)


if __name__ == "__main__":
    main()

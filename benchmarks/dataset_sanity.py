"""Sanity check of built-in data sets: test accuracy of a linear head on their features.

For each data set: a multinomial logistic regression (scikit-learn, C=1) trained on 100 random labeled
training rows (3 draws, mean) and on all training rows, scored on the test split. Featurises (and
caches) on first use. Last line: ``<name>_acc100=<> <name>_accall=<> ...``.

    python benchmarks/dataset_sanity.py --datasets fashion_mnist rotten_tomatoes
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.linear_model import LogisticRegression

from bayesal.data import load_dataset


def accuracy(xtr: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray) -> float:
    clf = LogisticRegression(C=1.0, max_iter=2000)
    clf.fit(xtr, ytr)
    return float((clf.predict(xte) == yte).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["fashion_mnist", "rotten_tomatoes"])
    ap.add_argument("--labels", type=int, default=100)
    ap.add_argument("--draws", type=int, default=3)
    args = ap.parse_args()
    summary = []
    for name in args.datasets:
        t0 = time.perf_counter()
        ds = load_dataset(name)
        load_s = time.perf_counter() - t0
        few = []
        for seed in range(args.draws):
            rng = np.random.default_rng(seed)
            # every class at least once, the rest uniformly at random
            first = [rng.choice(np.flatnonzero(ds.train_labels == c)) for c in range(ds.num_classes)]
            rest = rng.choice(np.setdiff1d(np.arange(ds.num_train), first), args.labels - len(first), replace=False)
            idx = np.r_[first, rest]
            few.append(accuracy(ds.train_features[idx], ds.train_labels[idx], ds.test_features, ds.test_labels))
        full = accuracy(ds.train_features, ds.train_labels, ds.test_features, ds.test_labels)
        print(f"{name}: {ds!r} ({ds.meta.get('backbone')}; loaded in {load_s:.0f}s, cache {ds.meta.get('cache')}) "
              f"accuracy {args.labels} labels {np.mean(few):.3f} (draws {', '.join(f'{a:.3f}' for a in few)}), "
              f"all labels {full:.3f}")
        summary += [f"{name}_acc{args.labels}={np.mean(few):.3f}", f"{name}_accall={full:.3f}"]
    print(" ".join(summary))


if __name__ == "__main__":
    main()

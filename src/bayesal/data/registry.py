"""Registry of built-in datasets. Every loader works offline from files that ship in packages."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from bayesal.exceptions import InvalidInputError

from .base import Dataset

__all__ = ["register", "list_datasets", "load_dataset"]

_REGISTRY: dict[str, tuple[Callable[..., Dataset], str]] = {}


def register(name: str, description: str) -> Callable[[Callable[..., Dataset]], Callable[..., Dataset]]:
    def deco(fn: Callable[..., Dataset]) -> Callable[..., Dataset]:
        _REGISTRY[name] = (fn, description)
        return fn

    return deco


def list_datasets() -> dict[str, str]:
    """Names of the built-in datasets with a one-line description."""
    return {k: v[1] for k, v in sorted(_REGISTRY.items())}


def load_dataset(name: str | os.PathLike, **kwargs) -> Dataset:
    """Load a built-in dataset by name (see :func:`list_datasets`) or a user file by path.

    A name that is not registered but is an existing file (``.npy``, ``.npz``, ``.parquet``, ``.csv``)
    is read with :func:`bayesal.data.user.load_features`; ``kwargs`` go to the loader.
    """
    key = os.fspath(name)
    if key in _REGISTRY:
        return _REGISTRY[key][0](**kwargs)
    if Path(key).expanduser().is_file():
        from .user import load_features

        return load_features(Path(key).expanduser(), **kwargs)
    raise InvalidInputError(
        f"unknown dataset {key!r}: not a built-in ({', '.join(sorted(_REGISTRY))}) and not an existing "
        "file (.npy, .npz, .parquet, .csv)"
    )


def add_file_options(parser) -> None:
    """Command-line options for reading a user features file (``--dataset FILE``)."""
    parser.add_argument("--label-column", default=None,
                        help="with a .csv/.parquet --dataset: the label column (default: label, labels, y, target(s))")
    parser.add_argument("--item-column", default=None,
                        help="with a .csv/.parquet --dataset: a column shown while labeling (e.g. the text)")


def file_loader_kwargs(args) -> dict[str, str]:
    """Loader keyword arguments from :func:`add_file_options`; an error if given for a built-in dataset."""
    kw = {k: v for k in ("label_column", "item_column") if (v := getattr(args, k, None)) is not None}
    if kw and getattr(args, "dataset", None) in _REGISTRY:
        opts = ", ".join("--" + k.replace("_", "-") for k in kw)
        raise InvalidInputError(f"{opts} only apply to a features file, not the built-in dataset {args.dataset!r}")
    return kw

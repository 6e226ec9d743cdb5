"""Built-in datasets (offline), feature caches and user data."""

from .base import Dataset
from .registry import list_datasets, load_dataset

__all__ = ["Dataset", "list_datasets", "load_dataset"]

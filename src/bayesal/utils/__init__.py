"""Helpers every layer may use: input validation, random streams and atomic file writes."""

from .atomic import atomic_write, atomic_write_bytes, fsync_dir
from .blas import blas_threads
from .locations import (
    check_output_file,
    check_writable_dir,
    describe_os_error,
    require_regular_file,
    safe_name,
    storage_error,
)
from .rng import RandomState, as_generator, derive_generator, derive_seed
from .validation import (
    as_features,
    as_targets,
    check_dtype,
    check_num_classes,
    check_scalar,
    infer_num_classes,
    summarize_validation_errors,
)

__all__ = [
    "RandomState",
    "as_features",
    "as_generator",
    "as_targets",
    "atomic_write",
    "atomic_write_bytes",
    "blas_threads",
    "check_dtype",
    "check_num_classes",
    "check_output_file",
    "check_scalar",
    "check_writable_dir",
    "derive_generator",
    "derive_seed",
    "describe_os_error",
    "fsync_dir",
    "infer_num_classes",
    "require_regular_file",
    "safe_name",
    "storage_error",
    "summarize_validation_errors",
]

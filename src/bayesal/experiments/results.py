"""Results files of ``bayesal run``: one row per (strategy, seed, cycle), in ``.parquet`` or ``.csv``.

Writers append one finished (strategy, seed) run at a time while holding an exclusive lock on a
sidecar file ``.<name>.lock``, so two ``bayesal run`` processes sharing a results file never lose each
other's rows. A Parquet file is rewritten to a unique temporary name and moved into place
(``os.replace``), so a reader sees the old or the new file, never a mixture. A CSV run is appended
with one ``os.write``; a crash or a full disk can only leave an incomplete last line, which readers
ignore and the next writer cuts off before appending (a failed append is undone the same way).

Runs are keyed by a fingerprint of the data's content (:func:`data_fingerprint`), not the file name,
so a rerun on changed data is computed afresh instead of reusing the old data's rows.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bayesal.exceptions import MissingFileError, ResultsFileError
from bayesal.utils import atomic_write, check_output_file, fsync_dir, require_regular_file, storage_error

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no lock, single writer assumed
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "RESULT_COLUMNS", "RESULT_SUFFIXES", "TornTailWarning", "data_fingerprint", "check_results_path",
    "check_results_frame", "check_csv_is_results", "read_results", "append_results", "results_lock",
]

#: Columns of a results file written by ``run_experiment``, in order.
RESULT_COLUMNS: tuple[str, ...] = (
    "strategy", "seed", "cycle", "num_labels", "accuracy", "nll", "brier", "ece", "accuracy_updated",
    "decision_flips", "query_time_s", "update_time_s", "train_time_s", "dataset", "data_fingerprint",
    "batch_size", "config",
)
RESULT_SUFFIXES = (".parquet", ".csv")
_INT_COLUMNS = ("seed", "cycle", "num_labels", "batch_size")
_TEXT_COLUMNS = ("strategy", "dataset", "data_fingerprint", "config")
LOCK_TIMEOUT_S = 120.0


class TornTailWarning(UserWarning):
    """A results file ends in an incomplete line (a write cut off by a crash or a full disk); it was ignored."""


def data_fingerprint(dataset: Any) -> str:
    """A 20-hex-digit SHA-256 of the dataset's content (features, labels, class names of both splits),
    so a run is matched to the data it was computed on, whatever the file is called."""
    h = hashlib.sha256(b"bayesal-data-v1;")
    for name in ("train_features", "train_labels", "test_features", "test_labels"):
        arr = np.ascontiguousarray(getattr(dataset, name))
        h.update(f"{name}:{arr.dtype.str}:{arr.shape};".encode())
        h.update(arr.tobytes())
    for c in dataset.class_names:
        b = str(c).encode("utf-8", errors="surrogatepass")
        h.update(b"%d:" % len(b) + b)
    return h.hexdigest()[:20]


def _check_suffix(path: Path) -> None:
    if path.suffix not in RESULT_SUFFIXES:
        raise ResultsFileError(f"results file must end in .parquet or .csv, got {path.name}")


def check_results_path(path: str | os.PathLike[str]) -> Path:
    """Check before any compute that results can be written to ``path`` (suffix, a writable directory,
    a regular writable file if it exists, the lock file can be made); returns it."""
    path = Path(path).expanduser()
    _check_suffix(path)
    check_output_file(path, what="results file")
    with results_lock(path):
        pass
    return path


def _lock_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


@contextmanager
def results_lock(path: str | os.PathLike[str], timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold the exclusive lock of the results file ``path`` (waits up to ``timeout`` seconds)."""
    lock = _lock_path(Path(path))
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise storage_error("create the lock file", lock, err) from err
    try:
        if fcntl is not None:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ResultsFileError(
                            f"results file {path} stayed locked by another process for {timeout:.0f} s; "
                            "wait for it to finish or write to another file"
                        ) from None
                    time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _repair_csv_bytes(raw: bytes) -> tuple[bytes, bool]:
    """``raw`` without an incomplete last line, and whether one was cut."""
    if not raw or raw.endswith(b"\n"):
        return raw, False
    return raw[: raw.rfind(b"\n") + 1], True


def read_results(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Load a results file; an incomplete last CSV line is ignored with a :class:`TornTailWarning`.

    Raises ``FileNotFoundError`` if absent, :class:`StorageError` if it is not a regular file and
    :class:`ResultsFileError` if it cannot be parsed."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"no results file at {path}")
    require_regular_file(path, what="results file")
    _check_suffix(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise storage_error("read the results file", path, err) from err
    try:
        if path.suffix == ".csv":
            raw, torn = _repair_csv_bytes(raw)
            if torn:
                warnings.warn(f"results file {path} ends in an incomplete line (a write cut off by a crash or "
                              "a full disk); it is ignored and the next run removes it", TornTailWarning,
                              stacklevel=2)
            if not raw.strip():
                return pd.DataFrame()
            return pd.read_csv(io.BytesIO(raw))
        return pd.read_parquet(io.BytesIO(raw))
    except Exception as err:  # noqa: BLE001 - pyarrow/pandas raise many types for a damaged file
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ResultsFileError(f"could not read results file {path} ({reason}); it is damaged or not a results "
                               "file: move it away or write to a new file") from err


def _read_existing(path: Path) -> pd.DataFrame | None:
    """The rows already in ``path`` (None if absent or empty)."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TornTailWarning)  # the writer repairs it
        df = read_results(path)
    return None if df.empty and not len(df.columns) else df


def _check_columns(path: Path, expected: Iterable[str], found: list[str]) -> None:
    expected = list(expected)
    if set(expected) != set(found):
        raise ResultsFileError(
            f"results file {path} has a different schema; expected columns {expected}, found {found} "
            f"(the file lacks {sorted(set(expected) - set(found))} and has extra "
            f"{sorted(set(found) - set(expected))}); write to a new file"
        )


def check_results_frame(df: pd.DataFrame, path: str | os.PathLike[str]) -> pd.DataFrame:
    """Check the rows of a ``run_experiment`` results file: the columns of :data:`RESULT_COLUMNS`,
    whole numbers in the count columns and numbers in the metric columns; returns ``df``."""
    path = Path(path)
    _check_columns(path, RESULT_COLUMNS, [str(c) for c in df.columns])
    for col in RESULT_COLUMNS:
        if col in _TEXT_COLUMNS:
            continue
        values = pd.to_numeric(df[col], errors="coerce")
        bad = values.isna() & df[col].notna()
        if col in _INT_COLUMNS:
            bad |= values.isna() | (values.notna() & (values != values.round()))
        if bool(bad.any()):
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise ResultsFileError(
                f"results file {path}: column {col!r} holds {df[col].iloc[row]!r} in row {row + 1}, not "
                f"{'a whole number' if col in _INT_COLUMNS else 'a number'}; it was edited or is not a "
                "bayesal results file: write to a new file"
            )
    return df


def _clear_stale_temps(path: Path) -> None:
    """Remove temporary files of writers killed mid-write (only lock holders make them)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            tmp.unlink()
        except OSError:
            pass


def check_csv_is_results(path: Path, columns: Iterable[str] = RESULT_COLUMNS) -> None:
    """Refuse, before anything is cut or appended, a non-empty ``.csv`` without a line end that is not the
    beginning of the results header (a first write cut off by a crash): the writer would take it for an
    empty results file with a torn tail and cut it. Files with lines are checked by their header."""
    try:
        with path.open("rb") as fh:
            head = fh.read(1 << 16)
    except FileNotFoundError:
        return
    except OSError as err:
        raise storage_error("read the results file", path, err) from err
    if not head:
        return
    header = ",".join(str(c) for c in columns).encode()
    if b"\n" in head:
        if not head.split(b"\n", 1)[0].strip():
            raise ResultsFileError(f"{path} is not a bayesal results file (its first line is empty, where a results "
                                   "file has its header); it was left untouched: write the results to a new file")
        return  # a first line: the reader checks it is the results header (different columns are refused)
    if header.startswith(head):
        return  # a results file whose first write was cut off inside its header
    else:
        reason = "it has no header line (no newline in its first 64 KiB)" if len(head) == 1 << 16 else (
            "its content is not a results header")
    raise ResultsFileError(f"{path} is not a bayesal results file ({reason}); it was left untouched: write the "
                           "results to a new file")


def _append_csv(path: Path, new: pd.DataFrame) -> None:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise storage_error("open the results file", path, err) from err
    try:
        size = os.fstat(fd).st_size
        keep = size
        if size:
            # cut an incomplete last line (a crash mid-write) so the new rows start on a line of their own
            tail_len = min(size, 1 << 16)
            tail = os.pread(fd, tail_len, size - tail_len)
            if not tail.endswith(b"\n"):
                nl = tail.rfind(b"\n")
                if nl < 0 and tail_len < size:
                    raise ResultsFileError(f"results file {path} ends in a line of over 64 KiB without a newline; "
                                           "it is not a bayesal results file: write to a new file")
                keep = size - tail_len + nl + 1
        data = new.to_csv(index=False, header=keep == 0).encode()
        try:
            if keep != size:
                os.ftruncate(fd, keep)
            os.lseek(fd, keep, os.SEEK_SET)
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
        except OSError as err:
            try:  # leave the file as it was: no half-written run for the next reader to trip over
                os.ftruncate(fd, keep)
                os.fsync(fd)
            except OSError:
                pass
            raise storage_error("append to the results file", path, err) from err
    finally:
        os.close(fd)


def append_results(rows: Iterable[dict[str, Any]], path: str | os.PathLike[str]) -> None:
    """Append ``rows`` to a ``.parquet`` or ``.csv`` results file, holding its lock.

    Raises :class:`ResultsFileError`, leaving the file untouched, if an existing file has other
    columns (appending would put CSV rows under the wrong header or fill Parquet columns with NaN),
    and :class:`StorageError` if the disk is full or read-only (the file is left as it was)."""
    path = Path(path).expanduser()
    _check_suffix(path)
    new = pd.DataFrame(list(rows))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise storage_error("create the directory of", path, err) from err
    if path.exists():
        require_regular_file(path, what="results file")
    with results_lock(path):
        if path.suffix == ".csv":
            check_csv_is_results(path, [str(c) for c in new.columns])
        old = _read_existing(path)
        if old is not None:
            _check_columns(path, new.columns, [str(c) for c in old.columns])
            new = new[list(old.columns)]  # same columns, the file's order
        if path.suffix == ".csv":
            _append_csv(path, new)
            return
        _clear_stale_temps(path)
        frame = new if old is None else pd.concat([old, new], ignore_index=True)
        try:
            buf = io.BytesIO()
            frame.to_parquet(buf, index=False)
        except Exception as err:  # noqa: BLE001 - pyarrow type errors: mixed types in a column
            raise ResultsFileError(f"could not append to results file {path}: the rows do not fit its column "
                                   f"types ({err}); write to a new file") from err
        atomic_write(path, lambda fh: fh.write(buf.getvalue()), permissions=0o644)
        fsync_dir(path.parent)


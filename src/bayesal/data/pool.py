"""Out-of-core pools: unlabeled features ``(N, D)`` read in row chunks with bounded memory.

A :class:`Pool` is a read-only description of where the rows live (paths and row counts, no open
handles), so it pickles cheaply and can be sent to other processes (e.g. Ray workers):

- :class:`ArrayPool` - an in-memory array (what every strategy accepted before);
- :class:`NpyPool` - one ``.npy`` file, memory-mapped for random access (:meth:`Pool.take`) and
  streamed with plain buffered reads for :meth:`Pool.chunks` (mapped pages would count towards the
  resident memory until the kernel drops them; a read buffer of one chunk does not);
- :class:`ParquetPool` - one Parquet file with a list column ``features`` or numeric columns;
- :class:`ZarrPool` - a 2-D Zarr array (``pip install bayesal[zarr]``);
- :class:`ShardedPool` - the rows of several pools one after another (a directory of shards).

:func:`open_pool` picks the right one for an array, a file or a directory. Every pool yields
float32/float64 NumPy arrays; :meth:`Pool.chunks` holds at most ``prefetch + 1`` chunks at a time.
"""

from __future__ import annotations

import json
import os
import queue
import stat
import threading
import tokenize
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bayesal.exceptions import DataFileError, InvalidInputError, MissingDependencyError

__all__ = [
    "Pool",
    "ArrayPool",
    "NpyPool",
    "ParquetPool",
    "PoolColumnsWarning",
    "ZarrPool",
    "ShardedPool",
    "RowRange",
    "open_pool",
    "DEFAULT_CHUNK_BYTES",
]

#: Default size of one chunk yielded by :meth:`Pool.chunks` (bytes of the pool's own dtype).
DEFAULT_CHUNK_BYTES = 32 * 2**20

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _check_dtype(dtype: np.dtype, where: str) -> np.dtype:
    dtype = np.dtype(dtype)
    if dtype not in _FLOAT_DTYPES:
        raise DataFileError(f"{where}: features must be float32 or float64, got {dtype}; convert them with "
                            "numpy's astype(np.float32) before building the pool")
    return dtype



#: The file in which a shard directory records what it holds (:mod:`bayesal.data.shards`).
MANIFEST_NAME = "manifest.json"


def shard_plan(n_items: int, shard_rows: int) -> list[tuple[int, int]]:
    """Row ranges ``[(start, stop), ...]`` of the shards of ``n_items`` rows."""
    if shard_rows < 1:
        raise InvalidInputError(f"shard_rows must be >= 1, got {shard_rows}")
    return [(s, min(n_items, s + shard_rows)) for s in range(0, n_items, shard_rows)]


def shard_name(k: int) -> str:
    """File name of shard ``k`` of a shard directory."""
    return f"shard-{k:06d}.npy"


def row_indices(indices: Any, n_rows: int) -> np.ndarray:
    """``indices`` as an ``int64`` vector of rows in ``[0, n_rows)``: integers only (a float such as 2.7 is
    not silently truncated, a boolean mask is not taken for the rows 0 and 1), one dimension at most.

    Raises
    ------
    InvalidInputError
        For anything else, naming what was given.
    """
    arr = np.asarray(indices)
    if arr.dtype == np.bool_:
        raise InvalidInputError("row indices are booleans; for a mask pass np.flatnonzero(mask)")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise InvalidInputError(f"row indices must be integers, got {arr.dtype} values such as {arr.reshape(-1)[0]!r}")
    if arr.ndim > 1:
        raise InvalidInputError(f"row indices must be one-dimensional, got shape {arr.shape}")
    idx = arr.astype(np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= n_rows):
        raise InvalidInputError(f"row indices must lie in [0, {n_rows - 1}]")
    return idx


class Pool(ABC):
    """Read-only features ``(N, D)`` read in contiguous row blocks.

    Subclasses implement :meth:`read`; ``n_rows``, ``dim`` and ``dtype`` are set at construction.
    """

    n_rows: int
    dim: int
    dtype: np.dtype

    @abstractmethod
    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` as a new C-contiguous array ``(stop - start, D)`` in ``dtype``."""

    # ----------------------------------------------------------------- shape
    def __len__(self) -> int:
        return self.n_rows

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_rows, self.dim)

    @property
    def nbytes(self) -> int:
        return self.n_rows * self.dim * self.dtype.itemsize

    def default_chunk_rows(self, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
        """Rows per chunk so that one chunk is about ``chunk_bytes``."""
        return max(1, int(chunk_bytes) // max(1, self.dim * self.dtype.itemsize))

    # --------------------------------------------------------------- reading
    def _check_range(self, start: int, stop: int) -> tuple[int, int]:
        start, stop = int(start), int(stop)
        if not 0 <= start <= stop <= self.n_rows:
            raise InvalidInputError(f"row range [{start}, {stop}) is outside the pool's {self.n_rows} rows")
        return start, stop

    def chunks(self, chunk_rows: int | None = None, *, start: int = 0, stop: int | None = None,
               prefetch: int = 1) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(offset, rows (n, D))`` blocks of ``chunk_rows`` rows covering ``[start, stop)``.

        ``prefetch`` chunks are read ahead by a background thread (file reads release the GIL, so the
        disk works while the caller computes): at most ``prefetch + 1`` chunks are alive at once, the
        caller's and those read ahead.
        """
        stop = self.n_rows if stop is None else stop
        start, stop = self._check_range(start, stop)
        if chunk_rows is not None and (isinstance(chunk_rows, bool) or not isinstance(chunk_rows, (int, np.integer))):
            raise InvalidInputError(f"chunk_rows must be an integer >= 1, got {chunk_rows!r}")
        step = int(chunk_rows) if chunk_rows is not None else self.default_chunk_rows()
        if step < 1:
            raise InvalidInputError(f"chunk_rows must be >= 1, got {chunk_rows}")
        bounds = [(s, min(stop, s + step)) for s in range(start, stop, step)]
        if prefetch <= 0 or len(bounds) <= 1:
            for s, e in bounds:
                yield s, self.read(s, e)
            return
        yield from _prefetched(self, bounds, prefetch)

    def take(self, indices: Any) -> np.ndarray:
        """Rows at ``indices`` (any order, repeats allowed) as ``(len(indices), D)``."""
        idx = row_indices(indices, self.n_rows)
        out = np.empty((idx.size, self.dim), dtype=self.dtype)
        if idx.size == 0:
            return out
        order = np.argsort(idx, kind="stable")
        sidx = idx[order]
        # read runs of nearby rows in one go; a gap of more than 64 rows starts a new read
        breaks = np.flatnonzero(np.diff(sidx) > 64) + 1
        for run in np.split(np.arange(sidx.size), breaks):
            lo, hi = int(sidx[run[0]]), int(sidx[run[-1]]) + 1
            block = self.read(lo, hi)
            out[order[run]] = block[sidx[run] - lo]
        return out

    def to_numpy(self) -> np.ndarray:
        """All rows in memory ``(N, D)`` (only for pools that fit)."""
        return self.read(0, self.n_rows)

    # -------------------------------------------------------------- division
    def slice(self, start: int, stop: int) -> Pool:
        """A view of rows ``[start, stop)`` (no data is read)."""
        start, stop = self._check_range(start, stop)
        if start == 0 and stop == self.n_rows:
            return self
        return RowRange(self, start, stop)

    def shards(self) -> list[Pool]:
        """The pool's natural parts (files of a sharded pool; the pool itself otherwise)."""
        return [self]

    def split(self, n_parts: int) -> list[Pool]:
        """At most ``n_parts`` contiguous views of near-equal size covering all rows in order."""
        n_parts = max(1, min(int(n_parts), max(1, self.n_rows)))
        edges = np.linspace(0, self.n_rows, n_parts + 1).round().astype(int)
        return [self.slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a] or [self]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n_rows={self.n_rows}, dim={self.dim}, dtype={self.dtype})"


def _prefetched(pool: Pool, bounds: list[tuple[int, int]], prefetch: int) -> Iterator[tuple[int, np.ndarray]]:
    """Chunks read by a daemon thread at most ``prefetch`` chunks ahead of the consumer (a semaphore
    slot per chunk read ahead); errors are re-raised in the caller."""
    q: queue.Queue = queue.Queue()
    slots = threading.Semaphore(prefetch)
    stop_flag = threading.Event()
    done = object()

    def work() -> None:
        try:
            for s, e in bounds:
                while not slots.acquire(timeout=0.1):
                    if stop_flag.is_set():
                        return
                if stop_flag.is_set():
                    return
                q.put((s, pool.read(s, e)))
            q.put(done)
        except BaseException as err:  # handed to the consumer, which re-raises it
            q.put(err)

    t = threading.Thread(target=work, name="bayesal-pool-prefetch", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            slots.release()  # the consumer now holds this chunk; the reader may fetch one more
            yield item
    finally:
        stop_flag.set()
        t.join()


# ---------------------------------------------------------------------------- in memory


class ArrayPool(Pool):
    """An in-memory array ``(N, D)`` (a NumPy array, a ``np.memmap`` or a CPU torch tensor)."""

    def __init__(self, array: Any) -> None:
        try:
            import torch

            if isinstance(array, torch.Tensor):
                array = array.detach().cpu().numpy()
        except ImportError:  # pragma: no cover - torch is a core dependency
            pass
        arr = np.asarray(array)
        if arr.ndim != 2:
            raise InvalidInputError(f"pool features must be 2-D (N, D), got shape {arr.shape}")
        if arr.dtype not in _FLOAT_DTYPES:
            arr = arr.astype(np.float32)
        self.array = arr
        self.n_rows, self.dim = arr.shape
        self.dtype = arr.dtype

    def read(self, start: int, stop: int) -> np.ndarray:
        start, stop = self._check_range(start, stop)
        return np.array(self.array[start:stop], order="C", copy=True)

    def take(self, indices: Any) -> np.ndarray:
        idx = row_indices(indices, self.n_rows)
        return np.ascontiguousarray(self.array[idx])


class RowRange(Pool):
    """Rows ``[start, stop)`` of another pool."""

    def __init__(self, base: Pool, start: int, stop: int) -> None:
        self.base, self.start, self.stop = base, int(start), int(stop)
        self.n_rows, self.dim, self.dtype = self.stop - self.start, base.dim, base.dtype

    def read(self, start: int, stop: int) -> np.ndarray:
        start, stop = self._check_range(start, stop)
        return self.base.read(self.start + start, self.start + stop)

    def slice(self, start: int, stop: int) -> Pool:
        start, stop = self._check_range(start, stop)
        return RowRange(self.base, self.start + start, self.start + stop)

    def __repr__(self) -> str:
        return f"RowRange({self.base!r}, {self.start}, {self.stop})"


# ---------------------------------------------------------------------------- files


def read_npy_header(path: str | os.PathLike) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    """``(shape, dtype, fortran_order, data_offset)`` of a ``.npy`` file, without reading the data."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            major, minor = np.lib.format.read_magic(f)
            if (major, minor) not in ((1, 0), (2, 0), (3, 0)):  # what numpy itself can map later
                raise DataFileError(f"unsupported .npy format version {major}.{minor}")
            if major == 1:
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            offset = f.tell()
    except (OSError, ValueError, SyntaxError, TypeError, tokenize.TokenError) as err:  # a damaged header
        raise DataFileError(f"{path}: not a readable .npy file ({err}); write it with numpy.save") from err
    return tuple(shape), np.dtype(dtype), bool(fortran), offset


class PoolColumnsWarning(UserWarning):
    """A Parquet pool holds columns that are not read as features (e.g. a text column)."""


class NpyPool(Pool):
    """A 2-D float32/float64 ``.npy`` file (C order), e.g. written by ``np.save`` or ``np.lib.format.open_memmap``."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = _regular_file(Path(path))
        shape, dtype, fortran, offset = read_npy_header(self.path)
        if len(shape) != 2:
            raise DataFileError(f"{self.path}: pool features must be 2-D (N, D), got shape {shape}")
        if fortran and shape[0] > 1 and shape[1] > 1:
            raise DataFileError(f"{self.path}: the array is stored in Fortran order; save it with "
                                "np.save(path, np.ascontiguousarray(x)) so rows are contiguous")
        self.dtype = _check_dtype(dtype, str(self.path))
        self.n_rows, self.dim = int(shape[0]), int(shape[1])
        self.offset = offset
        expected = offset + self.n_rows * self.dim * self.dtype.itemsize
        size = self.path.stat().st_size
        if size < expected:
            raise DataFileError(f"{self.path}: file is truncated ({size} bytes, the header promises {expected}); "
                                "write it again")

    def read(self, start: int, stop: int) -> np.ndarray:
        start, stop = self._check_range(start, stop)
        out = np.empty((stop - start, self.dim), dtype=self.dtype)
        if out.size == 0:
            return out
        row_bytes = self.dim * self.dtype.itemsize
        buf = out.data.cast("B")  # out is C-contiguous: its buffer, byte by byte
        with open(self.path, "rb", buffering=0) as f:
            f.seek(self.offset + start * row_bytes)
            got = 0
            while got < len(buf):
                n = f.readinto(buf[got:])
                if not n:
                    raise DataFileError(f"{self.path}: file ended early while reading rows [{start}, {stop}); "
                                        "it was truncated after the pool was opened")
                got += n
        return out

    def memmap(self) -> np.memmap:
        """The whole array memory-mapped read-only (random access without reading everything)."""
        return np.load(self.path, mmap_mode="r")

    def take(self, indices: Any) -> np.ndarray:
        idx = row_indices(indices, self.n_rows)
        mm = self.memmap()
        try:
            return np.ascontiguousarray(mm[idx])
        finally:
            del mm

    def __repr__(self) -> str:
        return f"NpyPool({str(self.path)!r}, n_rows={self.n_rows}, dim={self.dim}, dtype={self.dtype})"


class ParquetPool(Pool):
    """One Parquet file: a list column ``features`` (one vector per row), else every float column in order.

    Rows are read one row group at a time, so keep row groups moderate (pyarrow's default is fine).
    """

    def __init__(self, path: str | os.PathLike, column: str | None = None) -> None:
        import pyarrow.parquet as pq

        self.path = _regular_file(Path(path))
        try:
            pf = pq.ParquetFile(self.path)
        except Exception as err:  # pyarrow raises its own ArrowInvalid/OSError types
            raise DataFileError(f"{self.path}: not a readable Parquet file ({err})") from err
        schema = pf.schema_arrow
        names = list(schema.names)
        import pyarrow as pa

        if column is None and "features" in names:
            column = "features"
        if column is not None:
            if column not in names:
                raise DataFileError(f"{self.path}: no column {column!r} (columns: {names[:10]})")
            typ = schema.field(column).type
            if not (pa.types.is_list(typ) or pa.types.is_fixed_size_list(typ) or pa.types.is_large_list(typ)):
                raise DataFileError(f"{self.path}: column {column!r} must hold one list of floats per row, got {typ}")
            self.columns = [column]
            self.list_column = True
            first = pf.read_row_group(0, columns=[column]).column(0) if pf.num_row_groups else None
            if first is None or len(first) == 0:
                raise DataFileError(f"{self.path}: the Parquet file has no rows")
            self.dim = len(first[0].as_py())
            value_type = typ.value_type
        else:
            self.columns = [n for n in names if pa.types.is_floating(schema.field(n).type)]
            if not self.columns:
                raise DataFileError(f"{self.path}: no float columns and no list column 'features'")
            self.list_column = False
            self.dim = len(self.columns)
            value_type = schema.field(self.columns[0]).type
        #: The file's columns that are not read as features (e.g. a text or id column beside them).
        self.other_columns = [n for n in names if n not in self.columns]
        if not self.list_column and self.other_columns:  # which columns are features was inferred: say so
            shown = ", ".join(f"{n!r} ({schema.field(n).type})" for n in self.other_columns[:5])
            warnings.warn(
                f"{self.path}: the pool's features are its {self.dim} float column(s); the other column(s) {shown}"
                f"{' …' if len(self.other_columns) > 5 else ''} are not features and are not read (pass a text "
                "column as the items, or store the features as one list column 'features')",
                PoolColumnsWarning, stacklevel=2,
            )
        self.dtype = np.dtype(np.float64) if pa.types.is_float64(value_type) else np.dtype(np.float32)
        sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
        self.group_starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.n_rows = int(self.group_starts[-1])

    def _group_array(self, pf: Any, g: int) -> np.ndarray:
        table = pf.read_row_group(g, columns=self.columns)
        if self.list_column:
            col = table.column(0).combine_chunks()
            flat = col.flatten().to_numpy(zero_copy_only=False)
            if flat.size != len(col) * self.dim:
                raise DataFileError(f"{self.path}: feature lists in row group {g} do not all have {self.dim} values")
            return flat.reshape(len(col), self.dim).astype(self.dtype, copy=False)
        cols = [table.column(i).to_numpy() for i in range(table.num_columns)]
        return np.stack(cols, axis=1).astype(self.dtype, copy=False)

    def read(self, start: int, stop: int) -> np.ndarray:
        import pyarrow.parquet as pq

        start, stop = self._check_range(start, stop)
        out = np.empty((stop - start, self.dim), dtype=self.dtype)
        if stop == start:
            return out
        pf = pq.ParquetFile(self.path)
        g0 = int(np.searchsorted(self.group_starts, start, side="right")) - 1
        g1 = int(np.searchsorted(self.group_starts, stop, side="left"))
        for g in range(g0, g1):
            gs, ge = int(self.group_starts[g]), int(self.group_starts[g + 1])
            lo, hi = max(start, gs), min(stop, ge)
            if hi > lo:
                out[lo - start : hi - start] = self._group_array(pf, g)[lo - gs : hi - gs]
        return out

    def __repr__(self) -> str:
        return f"ParquetPool({str(self.path)!r}, n_rows={self.n_rows}, dim={self.dim})"


class ZarrPool(Pool):
    """A 2-D float Zarr array (a path to the array, or an array opened by the caller)."""

    def __init__(self, source: Any) -> None:
        try:
            import zarr
        except ImportError as err:
            raise MissingDependencyError(f"Zarr pools need zarr ({err}); install it with `pip install bayesal[zarr]`") from err
        if isinstance(source, (str, os.PathLike)):
            self.path: Path | None = Path(source)
            _zarr_files_regular(self.path)
            try:
                arr = zarr.open_array(str(self.path), mode="r")
            except Exception as err:  # zarr raises several types for a non-array path
                raise DataFileError(f"{self.path}: not a readable Zarr array ({err})") from err
            self._array = None
        else:
            self.path, arr = None, source
            self._array = source
        if len(arr.shape) != 2:
            raise DataFileError(f"Zarr pool must be 2-D (N, D), got shape {arr.shape}")
        self.dtype = _check_dtype(arr.dtype, str(self.path or "zarr array"))
        self.n_rows, self.dim = int(arr.shape[0]), int(arr.shape[1])
        self.row_chunk = int(arr.chunks[0])

    def _open(self) -> Any:
        if self._array is not None:
            return self._array
        import zarr

        return zarr.open_array(str(self.path), mode="r")

    def read(self, start: int, stop: int) -> np.ndarray:
        start, stop = self._check_range(start, stop)
        try:
            block = self._open()[start:stop]
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as err:  # the codecs raise their own types (RuntimeError, ValueError, ...)
            where = str(self.path) if self.path is not None else "the Zarr array"
            raise DataFileError(f"{where}: rows {start}-{stop} cannot be read, a chunk is damaged "
                                f"({type(err).__name__}: {err}); write the array again") from err
        return np.ascontiguousarray(np.asarray(block), dtype=self.dtype)

    def default_chunk_rows(self, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
        rows = super().default_chunk_rows(chunk_bytes)
        return max(self.row_chunk, rows // self.row_chunk * self.row_chunk)  # whole Zarr chunks

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if self.path is not None:
            state["_array"] = None
        return state

    def __repr__(self) -> str:
        return f"ZarrPool({str(self.path) if self.path else 'array'!r}, n_rows={self.n_rows}, dim={self.dim})"


class ShardedPool(Pool):
    """Several pools of one width, their rows one after another (e.g. the files of a directory)."""

    def __init__(self, parts: Sequence[Pool]) -> None:
        parts = list(parts)
        if not parts:
            raise DataFileError("a sharded pool needs at least one shard")
        dims = {p.dim for p in parts}
        if len(dims) != 1:
            raise DataFileError(f"shards have different widths {sorted(dims)}; all must have the same D")
        self.parts = parts
        self.dim = parts[0].dim
        self.dtype = np.result_type(*[p.dtype for p in parts])
        self.starts = np.concatenate([[0], np.cumsum([p.n_rows for p in parts])]).astype(np.int64)
        self.n_rows = int(self.starts[-1])

    @classmethod
    def from_dir(cls, directory: str | os.PathLike) -> ShardedPool:
        """The shards of ``directory``: those its ``manifest.json`` lists (a directory written by
        :func:`~bayesal.data.shards.featurize_to_shards`; a missing or incomplete shard is an error, other
        files are not read), else every ``*.npy`` or every ``*.parquet`` file (not both), in sorted name order."""
        d = Path(directory)
        if not d.is_dir():
            raise DataFileError(f"{d}: not a directory of .npy or .parquet shards")
        if (d / MANIFEST_NAME).exists():
            return cls._from_manifest(d)
        npy = sorted(p for p in d.glob("*.npy") if not p.name.startswith("."))
        pq = sorted(p for p in d.glob("*.parquet") if not p.name.startswith("."))
        if npy and pq:
            raise DataFileError(f"{d}: holds both .npy and .parquet files; keep one kind of shard per directory")
        if not npy and not pq:
            raise DataFileError(f"{d}: no .npy or .parquet shards found")
        return cls([NpyPool(p) for p in npy] if npy else [ParquetPool(p) for p in pq])

    @classmethod
    def _from_manifest(cls, d: Path) -> ShardedPool:
        """Exactly the shards ``d/manifest.json`` plans, each checked for its row count."""
        try:
            raw = json.loads((d / MANIFEST_NAME).read_text())
            n_items, shard_rows = int(raw["n_items"]), int(raw["shard_rows"])
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataFileError(f"{d / MANIFEST_NAME}: unreadable shard manifest ({err})") from err
        if n_items < 1 or shard_rows < 1:
            raise DataFileError(f"{d / MANIFEST_NAME}: n_items and shard_rows must be >= 1, got {n_items}, {shard_rows}")
        parts = []
        for k, (start, stop) in enumerate(shard_plan(n_items, shard_rows)):
            path = d / shard_name(k)
            if not path.exists():
                raise DataFileError(f"{d}: shard {path.name} (rows {start}–{stop - 1} of {n_items}) is missing; "
                                    "run the featurisation again to finish it")
            part = NpyPool(path)
            if part.n_rows != stop - start:
                raise DataFileError(f"{path}: holds {part.n_rows} rows, the manifest plans {stop - start}; run the "
                                    "featurisation again to redo it")
            parts.append(part)
        return cls(parts)

    def read(self, start: int, stop: int) -> np.ndarray:
        start, stop = self._check_range(start, stop)
        out = np.empty((stop - start, self.dim), dtype=self.dtype)
        k = int(np.searchsorted(self.starts, start, side="right")) - 1
        pos = start
        while pos < stop:
            s, e = int(self.starts[k]), int(self.starts[k + 1])
            hi = min(stop, e)
            if hi > pos:
                out[pos - start : hi - start] = self.parts[k].read(pos - s, hi - s)
            pos = max(pos, hi)
            k += 1
        return out

    def shards(self) -> list[Pool]:
        return list(self.parts)

    def shard_offsets(self) -> np.ndarray:
        """Row offset of each shard ``(n_shards + 1,)``; the last entry is ``N``."""
        return self.starts.copy()

    def __repr__(self) -> str:
        return f"ShardedPool({len(self.parts)} shards, n_rows={self.n_rows}, dim={self.dim})"


def _regular_file(path: Path) -> Path:
    """``path`` if it is a regular file (checked with ``os.stat`` before opening: reading a FIFO or a
    device would block or never end); else :class:`DataFileError`."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise DataFileError(f"{path}: cannot read the pool file ({err.strerror or err})") from err
    if not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "not a regular file"
        raise DataFileError(f"{path}: the pool file is {kind}; give a regular .npy/.parquet file")
    return path


def _zarr_files_regular(path: Path) -> None:
    """Refuse a Zarr directory holding a FIFO, device or socket (the codec's reader threads would block
    on it forever); ``os.stat`` only, nothing is opened."""
    for folder, _, names in os.walk(path):
        for name in names:
            file = Path(folder) / name
            try:
                mode = os.stat(file).st_mode
            except OSError:
                continue  # a dangling link: Zarr reads it as a missing chunk
            if not stat.S_ISREG(mode):
                raise DataFileError(f"{file}: a file of the Zarr array is not a regular file (a FIFO or device); "
                                    "remove it or write the array again")


def _is_zarr(path: Path) -> bool:
    return path.suffix == ".zarr" or (path / "zarr.json").exists() or (path / ".zarray").exists()


def open_pool(source: Any) -> Pool:
    """A :class:`Pool` for ``source``: a pool (returned as is), an array/tensor ``(N, D)``, a ``.npy``,
    ``.parquet`` or Zarr path, or a directory of ``.npy``/``.parquet`` shards."""
    if isinstance(source, Pool):
        return source
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not path.exists():
            raise DataFileError(f"{path}: no such file or directory (expected a .npy/.parquet file, a Zarr array "
                                "or a directory of shards)")
        if _is_zarr(path):
            return ZarrPool(path)
        if path.is_dir():
            return ShardedPool.from_dir(path)
        if path.suffix == ".npy":
            return NpyPool(path)
        if path.suffix == ".parquet":
            return ParquetPool(path)
        raise DataFileError(f"{path}: unknown pool format {path.suffix!r}; use .npy, .parquet, Zarr or a directory")
    if type(source).__module__.startswith("zarr"):
        return ZarrPool(source)
    return ArrayPool(source)

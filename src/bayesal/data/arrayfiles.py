"""Reading NumPy ``.npy`` and ``.npz`` files without pickles; a damaged or foreign file is a :class:`DataFileError`.

Shared by :class:`~bayesal.data.base.Dataset` (its own ``.npz`` format) and the user-file loaders.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bayesal.exceptions import DataFileError

__all__ = ["load_npy", "load_npz", "first_line"]


def load_npy(path: Path) -> np.ndarray:
    """One ``.npy`` array (no pickles); a damaged or foreign file raises :class:`DataFileError`."""
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - numpy raises ValueError, OSError, EOFError, ... for bad files
        raise DataFileError(f"could not read {path} as a .npy array: {first_line(err)}") from err
    if not isinstance(arr, np.ndarray):
        raise DataFileError(f"{path} is not a .npy array file (it holds several arrays: name it .npz)")
    return arr


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file (no pickles); a damaged or foreign file raises :class:`DataFileError`."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise DataFileError(f"{path} is a single .npy array, not an .npz archive: name it .npy")
            return {k: z[k] for k in z.files}
    except DataFileError:
        raise
    except FileNotFoundError:
        raise
    except AttributeError as err:  # np.load returned a bare array: no context manager
        raise DataFileError(f"{path} is a single .npy array, not an .npz archive: name it .npy") from err
    except Exception as err:  # noqa: BLE001 - BadZipFile, zlib.error, ValueError, EOFError, ... for bad files
        raise DataFileError(f"could not read {path} as an .npz archive: {first_line(err)}") from err


def first_line(err: BaseException) -> str:
    """The first line of an error's message (at most 300 characters), or its type name if it has none."""
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else type(err).__name__

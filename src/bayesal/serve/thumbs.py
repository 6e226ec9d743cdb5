"""Which thumbnails a served session's items have: an image folder's (made at featurisation), or those
of an image array (made on first use, kept in the session folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bayesal.data import ImageFiles, Thumbnails, content_key, is_image
from bayesal.exceptions import BayesalError

__all__ = ["NotFoundError", "thumbnails_of", "THUMBS_FOLDER"]

#: The session folder's subfolder of the thumbnails made on first use.
THUMBS_FOLDER = "thumbs"


class NotFoundError(BayesalError, LookupError):
    """A thumbnail asked for that this session does not have (the app answers 404)."""


def thumbnails_of(items: Any, state_dir: Path | None) -> Thumbnails | None:
    """The :class:`Thumbnails` of a session's ``items`` when they are images, else None.

    Image files keep the thumbnails made with their features (else they are made on first use in the
    session folder ``state_dir``); an ``(N, H, W[, C])`` array of pixels gets them on first use, in
    ``state_dir/thumbs/<hash of the pixels>`` (in memory for a session without a folder).
    """
    fallback = None if state_dir is None else Path(state_dir) / THUMBS_FOLDER
    if isinstance(items, ImageFiles):
        return items.thumbnail_store(fallback)
    if isinstance(items, np.ndarray) and items.ndim >= 3 and len(items) > 0 and is_image(items[0]):
        a = np.ascontiguousarray(items)
        key = content_key(str(a.dtype), str(a.shape), a.data)
        return Thumbnails(items, fallback, "px-" + key)
    return None

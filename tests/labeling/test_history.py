"""Bookkeeping of a session without a posterior: the undo cache and the action history."""

from __future__ import annotations

import pytest

from bayesal.exceptions import InvalidInputError
from bayesal.labeling.history import LabelBook, UndoCache, is_fit_point


def test_undo_cache_keeps_only_the_last_states():
    cache: UndoCache[str] = UndoCache(2)
    for s in "abcd":
        cache.push(s)
    assert len(cache) == 4 and cache.peek() == "d"
    assert [cache.pop() for _ in range(4)] == ["d", "c", None, None]  # older states are replayed
    assert cache.pop() is None
    none: UndoCache[str] = UndoCache(0)
    none.push("a")
    assert none.peek() is None
    cache.reset(3)
    assert len(cache) == 3 and cache.peek() is None


def test_book_folds_undo_redo_and_counts_tells_since_the_last_fit():
    book = LabelBook(["a", "b"], 10)
    for ev in [{"op": "tell", "index": 1, "label": 0}, {"op": "tell", "index": 2, "label": 1, "retrain": True},
               {"op": "skip", "index": 3}, {"op": "tell", "index": 3, "label": 1, "was_skipped": True}]:
        book.fold(ev)
    assert book.labels == {1: 0, 2: 1, 3: 1} and book.skipped == set() and book.tells_since_fit() == 1
    assert is_fit_point(book.history[1]) and not is_fit_point(book.history[0])
    book.fold({"op": "undo"})
    assert book.labels == {1: 0, 2: 1} and book.skipped == {3}
    book.fold({"op": "redo"})
    assert book.labels[3] == 1 and not book.redo
    book.fold({"op": "correct", "index": 1, "label": 1, "old": 0})
    book.fold({"op": "undo"})
    assert book.labels[1] == 0
    with pytest.raises(InvalidInputError, match="expects old label 1"):
        book.fold({"op": "correct", "index": 1, "label": 0, "old": 1})
    with pytest.raises(InvalidInputError, match="unknown event"):
        book.fold({"op": "relabel"})
    with pytest.raises(ValueError, match="out of range"):  # an InvalidInputError is a ValueError
        book.check_index(10)

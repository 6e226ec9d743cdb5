"""The bookkeeping of a labeling session: labels, skipped instances, the undoable action history and
the bounded cache of the states before each action.

A :class:`LabelBook` knows nothing of posteriors or files: it validates an event against the current
state (an index in range and not yet labeled, a known class, something to undo, …) and folds it in.
Actions are ``tell``, ``skip``, ``correct`` and ``retrain``; ``undo`` moves the last action onto the
redo stack, ``redo`` moves it back, and any new action clears the redo stack.
:class:`~bayesal.labeling.session.Session` keeps one book and derives the posterior from its history;
an :class:`UndoCache` keeps the posteriors before the last few actions so that undo is instant.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Generic, TypeVar

import numpy as np
import torch

from bayesal.exceptions import InvalidInputError

__all__ = ["LabelBook", "UndoCache", "is_fit_point"]

T = TypeVar("T")


def is_fit_point(action: Mapping[str, Any]) -> bool:
    """True for an action after which the head is trained from scratch (a retrain, or a tell that
    triggered the automatic retrain): the posterior there depends on the labels only."""
    return action["op"] == "retrain" or (action["op"] == "tell" and bool(action.get("retrain")))


class UndoCache(Generic[T]):
    """The states before each action of the history, of which only the last ``size`` are kept.

    Entry ``j`` is the state before action ``j``; older entries are ``None`` (their state is recomputed
    by replaying the history). States are never modified in place, so keeping them costs no copy.
    """

    def __init__(self, size: int) -> None:
        self.size = max(0, int(size))
        self._stack: list[T | None] = []

    def push(self, state: T) -> None:
        """Record ``state`` as the state before a new action (forgetting the oldest beyond ``size``)."""
        self._stack.append(state)
        k = len(self._stack) - self.size - 1
        if k >= 0:
            self._stack[k] = None

    def peek(self) -> T | None:
        """The state before the last action (``None`` if it is no longer kept)."""
        return self._stack[-1] if self._stack else None

    def pop(self) -> T | None:
        """Forget the last action's entry and return it (``None`` if it was no longer kept)."""
        return self._stack.pop() if self._stack else None

    def replace(self, j: int, state: T) -> None:
        """Make ``state`` the state before action ``j``, if that entry is still kept."""
        if max(0, len(self._stack) - self.size) <= j < len(self._stack):
            self._stack[j] = state

    def forget(self, start: int, stop: int) -> None:
        """Drop the states before actions ``start … stop - 1`` (an undo to them replays instead)."""
        for j in range(max(0, start), min(stop, len(self._stack))):
            self._stack[j] = None

    def reset(self, n_actions: int) -> None:
        """``n_actions`` entries, none kept (after a resume: every undo replays)."""
        self._stack = [None] * n_actions

    def __len__(self) -> int:
        return len(self._stack)


class LabelBook:
    """Labels ``{index: class}``, skipped indices, the action ``history`` and the ``redo`` stack of a
    pool of ``n_items`` instances with the given class names."""

    def __init__(self, class_names: Sequence[str], n_items: int) -> None:
        self.names = list(class_names)
        self.name_to_class = {n: c for c, n in enumerate(self.names)}
        self.n_items = int(n_items)
        self.labels: dict[int, int] = {}
        self.skipped: set[int] = set()
        self.history: list[dict[str, Any]] = []
        self.redo: list[dict[str, Any]] = []

    def check_index(self, index: Any) -> int:
        if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
            if isinstance(index, torch.Tensor) and index.numel() == 1 and not index.is_floating_point():
                index = int(index)
            else:
                raise InvalidInputError(f"index must be an integer pool position, got {index!r}")
        index = int(index)
        n = self.n_items
        if not 0 <= index < n:
            raise InvalidInputError(f"index {index} is out of range for a pool of {n} instances [0, {n - 1}]")
        return index

    def check_label(self, label: Any) -> int:
        """Class index of ``label`` (a class name or an index into ``class_names``)."""
        if isinstance(label, str):
            if label in self.name_to_class:
                return self.name_to_class[label]
            raise InvalidInputError(f"unknown class {label!r}; known classes: {', '.join(self.names)}")
        if isinstance(label, (bool, np.bool_)):
            raise InvalidInputError(f"label must be a class name or class index, got {label!r}")
        if isinstance(label, torch.Tensor) and label.numel() == 1 and not label.is_floating_point():
            label = int(label)
        if isinstance(label, (int, np.integer)):
            c = int(label)
            if not 0 <= c < len(self.names):
                raise InvalidInputError(f"class index {c} is out of range [0, {len(self.names) - 1}]")
            return c
        raise InvalidInputError(f"label must be a class name or class index, got {label!r}")

    def validate(self, ev: Mapping[str, Any]) -> None:
        """Raise :class:`~bayesal.exceptions.InvalidInputError` if ``ev`` cannot be applied to the current
        bookkeeping."""
        op = ev.get("op")
        if op in ("tell", "skip", "correct"):
            i = self.check_index(ev.get("index"))
            if op == "tell":
                self.check_label(int(ev["label"]))
                if i in self.labels:
                    raise InvalidInputError(
                        f"index {i} is already labeled as {self.names[self.labels[i]]!r}; use correct() to change it"
                    )
            elif op == "skip":
                if i in self.labels:
                    raise InvalidInputError(f"index {i} is already labeled as {self.names[self.labels[i]]!r}; cannot skip it")
                if i in self.skipped:
                    raise InvalidInputError(f"index {i} is already skipped")
            else:
                self.check_label(int(ev["label"]))
                if i not in self.labels:
                    raise InvalidInputError(f"index {i} is not labeled yet; use tell()")
                if int(ev["old"]) != self.labels[i]:
                    raise InvalidInputError(f"correction of index {i} expects old label {ev['old']}, found {self.labels[i]}")
        elif op == "retrain":
            if len(set(self.labels.values())) < 2:
                raise InvalidInputError("retraining needs labels of at least 2 different classes")
        elif op == "undo":
            if not self.history:
                raise InvalidInputError("nothing to undo")
        elif op == "redo":
            if not self.redo:
                raise InvalidInputError("nothing to redo")
        else:
            raise InvalidInputError(f"unknown event {op!r}")

    def apply(self, action: Mapping[str, Any]) -> None:
        op = action["op"]
        if op == "tell":
            i = int(action["index"])
            self.labels[i] = int(action["label"])
            self.skipped.discard(i)
        elif op == "correct":
            self.labels[int(action["index"])] = int(action["label"])
        elif op == "skip":
            self.skipped.add(int(action["index"]))
        self.history.append(dict(action))

    def revert(self) -> dict[str, Any]:
        action = self.history.pop()
        op = action["op"]
        i = int(action["index"]) if "index" in action else -1  # every op but a retrain names its item
        if op == "tell":
            del self.labels[i]
            if action.get("was_skipped"):
                self.skipped.add(i)
        elif op == "correct":
            self.labels[i] = int(action["old"])
        elif op == "skip":
            self.skipped.discard(i)
        return action

    @staticmethod
    def set_label(labels: dict[int, int], action: Mapping[str, Any]) -> None:
        """Record the label a tell or correct ``action`` gives in ``labels`` (other actions give none)."""
        if action["op"] in ("tell", "correct"):
            labels[int(action["index"])] = int(action["label"])

    def tells_since_fit(self) -> int:
        """Tells in the history after its last fit point (all of them if there is none)."""
        since = 0
        for action in reversed(self.history):
            if is_fit_point(action):
                break
            since += action["op"] == "tell"
        return since

    def labels_after(self, action: Mapping[str, Any]) -> dict[int, int]:
        labels = dict(self.labels)
        self.set_label(labels, action)
        return labels

    def fold(self, ev: Mapping[str, Any]) -> None:
        """Validate ``ev`` and apply it (an action, an undo or a redo); raises ``InvalidInputError`` if invalid."""
        self.validate(ev)
        op = ev["op"]
        if op == "undo":
            self.redo.append(self.revert())
        elif op == "redo":
            self.apply(self.redo.pop())
        else:
            self.redo.clear()
            self.apply(ev)

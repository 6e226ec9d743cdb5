"""The bookkeeping of a labeling session: labels, skipped instances and the undoable action history.

A :class:`LabelBook` knows nothing of posteriors or files: it validates an event against the current
state (an index in range and not yet labeled, a known class, something to undo, …) and folds it in.
Actions are ``tell``, ``skip``, ``correct`` and ``retrain``; ``undo`` moves the last action onto the
redo stack, ``redo`` moves it back, and any new action clears the redo stack. :class:`~bayesal.labeling.session.Session`
keeps one book and derives the posterior from its history.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = ["LabelBook"]


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
                raise ValueError(f"index must be an integer pool position, got {index!r}")
        index = int(index)
        n = self.n_items
        if not 0 <= index < n:
            raise ValueError(f"index {index} is out of range for a pool of {n} instances [0, {n - 1}]")
        return index

    def check_label(self, label: Any) -> int:
        """Class index of ``label`` (a class name or an index into ``class_names``)."""
        if isinstance(label, str):
            if label in self.name_to_class:
                return self.name_to_class[label]
            raise ValueError(f"unknown class {label!r}; known classes: {', '.join(self.names)}")
        if isinstance(label, (bool, np.bool_)):
            raise ValueError(f"label must be a class name or class index, got {label!r}")
        if isinstance(label, torch.Tensor) and label.numel() == 1 and not label.is_floating_point():
            label = int(label)
        if isinstance(label, (int, np.integer)):
            c = int(label)
            if not 0 <= c < len(self.names):
                raise ValueError(f"class index {c} is out of range [0, {len(self.names) - 1}]")
            return c
        raise ValueError(f"label must be a class name or class index, got {label!r}")

    def validate(self, ev: Mapping[str, Any]) -> None:
        """Raise ``ValueError`` if ``ev`` cannot be applied to the current bookkeeping."""
        op = ev.get("op")
        if op in ("tell", "skip", "correct"):
            i = self.check_index(ev.get("index"))
            if op == "tell":
                self.check_label(int(ev["label"]))
                if i in self.labels:
                    raise ValueError(
                        f"index {i} is already labeled as {self.names[self.labels[i]]!r}; use correct() to change it"
                    )
            elif op == "skip":
                if i in self.labels:
                    raise ValueError(f"index {i} is already labeled as {self.names[self.labels[i]]!r}; cannot skip it")
                if i in self.skipped:
                    raise ValueError(f"index {i} is already skipped")
            else:
                self.check_label(int(ev["label"]))
                if i not in self.labels:
                    raise ValueError(f"index {i} is not labeled yet; use tell()")
                if int(ev["old"]) != self.labels[i]:
                    raise ValueError(f"correction of index {i} expects old label {ev['old']}, found {self.labels[i]}")
        elif op == "retrain":
            if len(set(self.labels.values())) < 2:
                raise ValueError("retraining needs labels of at least 2 different classes")
        elif op == "undo":
            if not self.history:
                raise ValueError("nothing to undo")
        elif op == "redo":
            if not self.redo:
                raise ValueError("nothing to redo")
        else:
            raise ValueError(f"unknown event {op!r}")

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
        self.history.append(dict(action))  # type: ignore[arg-type]

    def revert(self) -> dict[str, Any]:
        action = self.history.pop()
        op, i = action["op"], action.get("index")
        if op == "tell":
            del self.labels[int(i)]
            if action.get("was_skipped"):
                self.skipped.add(int(i))
        elif op == "correct":
            self.labels[int(i)] = int(action["old"])
        elif op == "skip":
            self.skipped.discard(int(i))
        return action

    @staticmethod
    def set_label(labels: dict[int, int], action: Mapping[str, Any]) -> None:
        """Record the label a tell or correct ``action`` gives in ``labels`` (other actions give none)."""
        if action["op"] in ("tell", "correct"):
            labels[int(action["index"])] = int(action["label"])

    def labels_after(self, action: Mapping[str, Any]) -> dict[int, int]:
        labels = dict(self.labels)
        self.set_label(labels, action)
        return labels

    def fold(self, ev: Mapping[str, Any]) -> None:
        """Validate ``ev`` and apply it (an action, an undo or a redo); raises ``ValueError`` if invalid."""
        self.validate(ev)
        op = ev["op"]
        if op == "undo":
            self.redo.append(self.revert())
        elif op == "redo":
            self.apply(self.redo.pop())
        else:
            self.redo.clear()
            self.apply(ev)

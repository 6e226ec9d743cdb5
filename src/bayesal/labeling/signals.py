"""Stopping signals of a labeling session: is it worth labeling more?

Measured on a fixed random reference subset ``R`` of the pool:

* ``expected_accuracy``: ``mean_{x∈R} max_c p(c | x)``, the model's own estimate of its accuracy;
* ``gain_per_label``: change of the expected accuracy per label over the last ``window`` labels —
  small or negative ⇒ more labels add little;
* ``flips`` / ``flip_rate``: number / fraction of ``R`` whose predicted class changed over the last
  ``window`` labels — near 0 ⇒ the decisions are stable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import torch

from bayesal.utils import derive_seed

from .history import LabelBook

__all__ = ["StoppingSignals"]


class Predictive(Protocol):
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor: ...


class StoppingSignals:
    """The trace of earlier measurements (one point per distinct label count) and the reference subset
    of the pool ``x`` ``(N, D)``, drawn from ``seed`` on first use."""

    def __init__(self, x: torch.Tensor, seed: int) -> None:
        self.x = x
        self.seed = seed
        self._ref_idx: torch.Tensor | None = None
        self._trace: list[tuple[int, float, torch.Tensor]] = []

    def measure(
        self,
        posterior: Predictive,
        history: Sequence[Mapping[str, Any]],
        replay: Callable[[Sequence[Mapping[str, Any]]], Predictive],
        *,
        window: int = 10,
        reference_size: int = 2000,
    ) -> dict[str, Any]:
        """The signals of ``posterior`` (the current one, after ``history``), compared with the trace.

        On the first call (e.g. after a resume) the point ``window`` labels back is computed by
        ``replay`` of a prefix of ``history``. Returns ``n_labels``, ``expected_accuracy``,
        ``gain_per_label`` (NaN when no label lies in between), ``flips``, ``flip_rate``,
        ``window_labels`` (how many labels the comparison actually spans) and ``reference_size``.
        """
        if self._ref_idx is None:
            n = self.x.shape[0]
            gen = torch.Generator().manual_seed(derive_seed(self.seed, "reference"))
            self._ref_idx = torch.randperm(n, generator=gen)[: min(n, reference_size)].sort().values
        ea, pred = self._confidence(posterior)
        labels: dict[int, int] = {}
        for action in history:
            LabelBook.set_label(labels, action)
        n_now = len(labels)
        if not self._trace and n_now > 0:
            self._trace.append(self._past_point(history, replay, n_now - window))
        self._trace = [t for t in self._trace if t[0] < n_now]
        self._trace.append((n_now, ea, pred))
        older = [t for t in self._trace if t[0] <= n_now - window]
        then = older[-1] if older else self._trace[0]
        dn = n_now - then[0]
        flips = int((pred != then[2]).sum())
        return {
            "n_labels": n_now,
            "expected_accuracy": ea,
            "gain_per_label": (ea - then[1]) / dn if dn > 0 else float("nan"),
            "flips": flips,
            "flip_rate": flips / pred.numel(),
            "window_labels": dn,
            "reference_size": int(pred.numel()),
        }

    def _confidence(self, post: Predictive) -> tuple[float, torch.Tensor]:
        """Expected accuracy and predicted classes ``(R,)`` of ``post`` on the reference subset."""
        probs = post.predict_proba(self.x[self._ref_idx])
        return float(probs.max(1).values.mean()), probs.argmax(1)

    def _past_point(self, history: Sequence[Mapping[str, Any]],
                    replay: Callable[[Sequence[Mapping[str, Any]]], Predictive],
                    n_labels: int) -> tuple[int, float, torch.Tensor]:
        """Trace point of the latest history prefix with at most ``max(n_labels, 0)`` labels (replayed)."""
        labels: dict[int, int] = {}
        end, n_end = 0, 0
        for j, action in enumerate(history):
            LabelBook.set_label(labels, action)
            if len(labels) <= max(n_labels, 0):
                end, n_end = j + 1, len(labels)
        ea, pred = self._confidence(replay(history[:end]))
        return n_end, ea, pred

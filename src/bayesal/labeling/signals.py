"""Stopping signals of a labeling session: how good is the model, is it worth labeling more?

**Accuracy on the unlabeled pool, with a 90 % interval** (:func:`accuracy_interval`).

* Without audit labels, the *model-based* interval: the model's own expected accuracy
  ``Σ_x max_c p(c | x) / N`` over the unlabeled pool with the Poisson-binomial spread
  ``sqrt(Σ_x p_x (1 − p_x)) / N`` of the number of correct predictions. It is honest only if the
  predictive is calibrated on the pool; after uncertainty sampling it is not (the labeled items are
  the hard ones, and the head is under- or overconfident on the rest depending on the data).
* With *audit* labels — items drawn uniformly at random from the unlabeled pool, labeled like any
  other and predicted out of sample — the prediction-powered estimate (PPI, Angelopoulos et al.
  2023): the model-based estimate plus the mean rectifier ``r = 1[prediction correct] − confidence``
  of the audit labels, with the interval
  ``± t · sqrt(s_r² / n + Σ_x p_x (1 − p_x) / N²)`` (``t`` Student's quantile with ``n − 1`` degrees
  of freedom; ``s_r²`` the rectifiers' sample variance, floored at the mean Bernoulli variance
  ``c (1 − c)`` of the audit confidences so that a few identical rectifiers do not give a zero width).
  The miscalibration is corrected whatever its direction, at the price of the audit labels. An audit
  label may come with several kinds of out-of-sample prediction (``(n, k)`` inputs): the estimate is
  then the mean of the ``k`` estimates and the interval the hull of their intervals. The session gives
  two: the prediction made when the item was drawn (exactly out of sample, but of an older model,
  whose miscalibration drifts as labels accumulate) and the current model's leave-one-out predictive
  (the current model, but an approximate downdate). Each alone fell short in one data set of the
  benchmark, in opposite directions, and so did the mean of their rectifiers; the hull did not
  (``docs/benchmarks.md``).

**Gain and change** (:func:`prediction_gain`, :func:`prediction_change`), measured on a fixed random
reference subset ``R`` of the pool against the model at half the labels (``n/2`` of ``n``):

* the *gain*: the accuracy gained since, as the current model sees it,
  ``mean_x [p(ŷ_now(x) | x) − p(ŷ_then(x) | x)]``. Only the items whose prediction changed contribute,
  so it is 0 when the predictions are stable, but every change counts as a gain (the current model
  prefers its own predictions), so it overstates the gain where predictions flip among near-ties.
* the *change*: the share of ``R`` whose predicted class changed, ``mean_x 1[ŷ_now(x) ≠ ŷ_then(x)]``.
  The accuracy can only move where a prediction moves, so the change bounds the gain.

Divided by the labels in between (``n − n/2``) they are rates per label. The session's *expected gain
of the next 50 labels* is the change rate times 50: the most accuracy those labels can add if they
change predictions as fast as the last half of the labels did (the rate falls as labels accumulate, so
this is an upper bound of the next 50 labels' change). A session recommends stopping once it falls
below the user's threshold (default 0.02: fewer than 2 % of the predictions are expected to move).
The window grows with the labels, which makes the rule relative: the rate at which predictions change
is compared over the whole second half of the labeling, not over a fixed recent stretch that a single
refit or a run of near-ties can fill. In oracle runs it stopped nearer the label count at which the
accuracy first reaches 99 % of its final value than stabilizing predictions (Bloodgood &
Vijay-Shanker 2009) and than a threshold on the gain (``docs/benchmarks.md``, "A stop you can trust").

The earlier signals, measured on a fixed random reference subset ``R`` of the pool:

* ``expected_accuracy``: ``mean_{x∈R} max_c p(c | x)``, the model's own estimate of its accuracy;
* ``gain_per_label``: change of the expected accuracy per label over the last ``window`` labels —
  small or negative ⇒ more labels add little;
* ``flips`` / ``flip_rate``: number / fraction of ``R`` whose predicted class changed over the last
  ``window`` labels — near 0 ⇒ the decisions are stable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
from scipy import stats

from bayesal.exceptions import InvalidInputError
from bayesal.utils import derive_seed

from .history import LabelBook

__all__ = [
    "StoppingSignals", "AccuracyEstimate", "accuracy_interval", "prediction_gain", "prediction_change",
    "stop_recommended", "half_point", "DEFAULT_LEVEL", "DEFAULT_STOP_GAIN", "GAIN_HORIZON", "GAIN_WINDOW",
]

#: The interval's coverage.
DEFAULT_LEVEL = 0.9
#: Recommend stopping when the expected gain of the next :data:`GAIN_HORIZON` labels (the share of the
#: predictions they are expected to change, at most) is below this.
DEFAULT_STOP_GAIN = 0.02
#: The labels whose expected gain the stop is decided on.
GAIN_HORIZON = 50
#: The labels before the first gain (it is measured over the last half of the labels).
GAIN_WINDOW = 50


@dataclass(frozen=True)
class AccuracyEstimate:
    """An estimate of the accuracy on the unlabeled pool.

    Attributes
    ----------
    accuracy, low, high : float
        The point estimate and the interval (clipped to ``[0, 1]``).
    level : float
        The interval's nominal coverage.
    method : {"audit", "model"}
        Prediction-powered with audit labels, or the model's own (not honest after uncertainty sampling).
    n_audit : int
        Audit labels used.
    model_accuracy : float
        The model's own expected accuracy ``mean_x max_c p(c | x)``.
    pool_size : int
        Unlabeled items it is measured on.
    """

    accuracy: float
    low: float
    high: float
    level: float
    method: str
    n_audit: int
    model_accuracy: float
    pool_size: int

    def as_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return asdict(self)


def accuracy_interval(confidence: torch.Tensor, audit_correct: torch.Tensor | None = None,
                      audit_confidence: torch.Tensor | None = None, *, level: float = DEFAULT_LEVEL,
                      min_audit: int = 2) -> AccuracyEstimate:
    """The accuracy on a pool with an interval (see the module docstring for the formulas).

    Parameters
    ----------
    confidence : Tensor of shape (N,)
        ``max_c p(c | x)`` of the current model on each unlabeled item.
    audit_correct : Tensor of shape (n,) or (n, k), optional
        Whether the model's out-of-sample prediction of each audit label was right (0/1); with ``k``
        kinds of prediction, one interval per kind and their hull.
    audit_confidence : Tensor of shape (n,) or (n, k), optional
        That prediction's confidence.
    level : float, default 0.9
        Nominal coverage of the interval.
    min_audit : int, default 2
        Fewer audit labels give the model-based interval.

    Returns
    -------
    AccuracyEstimate
    """
    if not 0.0 < level < 1.0:
        raise InvalidInputError(f"level must lie in (0, 1), got {level!r}")
    c = confidence.detach().to(torch.float64).reshape(-1)
    n_pool = int(c.numel())
    model = float(c.mean()) if n_pool else float("nan")
    pool_var = float((c * (1.0 - c)).sum()) / n_pool**2 if n_pool else 0.0
    n = 0 if audit_correct is None else int(audit_correct.shape[0]) if audit_correct.ndim else 1
    clip = lambda v: min(max(v, 0.0), 1.0)  # noqa: E731
    if n >= max(2, min_audit) and audit_confidence is not None:
        a = audit_confidence.detach().to(torch.float64).reshape(n, -1)
        hits = audit_correct.detach().to(torch.float64).reshape(n, -1)  # type: ignore[union-attr]
        q = float(stats.t.ppf(0.5 + level / 2, n - 1))
        points, lows, highs = [], [], []
        for k in range(a.shape[1]):  # one interval per kind of prediction, then their hull
            r = hits[:, k] - a[:, k]
            floor = float((a[:, k] * (1.0 - a[:, k])).mean())
            half = q * math.sqrt(max(float(r.var(unbiased=True)), floor) / n + pool_var)
            points.append(model + float(r.mean()))
            lows.append(points[-1] - half)
            highs.append(points[-1] + half)
        return AccuracyEstimate(accuracy=clip(sum(points) / len(points)), low=clip(min(lows)), high=clip(max(highs)),
                                level=level, method="audit", n_audit=n, model_accuracy=model, pool_size=n_pool)
    half = float(stats.norm.ppf(0.5 + level / 2)) * math.sqrt(pool_var)
    return AccuracyEstimate(accuracy=clip(model), low=clip(model - half), high=clip(model + half),
                            level=level, method="model", n_audit=0, model_accuracy=model, pool_size=n_pool)


def prediction_gain(probs: torch.Tensor, previous: torch.Tensor) -> float:
    """The accuracy the current predictions gained over ``previous`` ones, as the current model sees it.

    Parameters
    ----------
    probs : Tensor of shape (R, C)
        The current predictive on the reference items.
    previous : Tensor of shape (R,)
        The classes an earlier model predicted there.

    Returns
    -------
    float
        ``mean_x [p(ŷ(x) | x) − p(previous(x) | x)] ≥ 0``.
    """
    now = probs.max(1).values
    then = probs.gather(1, previous.reshape(-1, 1).to(torch.long)).squeeze(1)
    return float((now - then).mean())


def prediction_change(pred: torch.Tensor, previous: torch.Tensor) -> float:
    """The share of items whose predicted class changed.

    Parameters
    ----------
    pred, previous : Tensor of shape (R,)
        The classes the current and an earlier model predict on the reference items.

    Returns
    -------
    float
        ``mean_x 1[pred(x) ≠ previous(x)]`` in ``[0, 1]``; it bounds the accuracy gained in between.
    """
    return float((pred.reshape(-1) != previous.reshape(-1)).to(torch.float64).mean())


def half_point(n_labels: int) -> tuple[int, int]:
    """The label counts an earlier point at half of ``n_labels`` may have: ``(lowest, highest)``.

    The highest is ``n/2``; a point up to ``max(10, n/20)`` labels older is close enough (an existing trace
    point instead of a replay), the rate being divided by the labels actually in between.
    """
    high = n_labels // 2
    return max(high - max(10, n_labels // 20), 0), high


def stop_recommended(gain_next: float, threshold: float | None) -> bool:
    """Whether to stop: the expected gain of the next labels is known and below ``threshold``."""
    return threshold is not None and math.isfinite(gain_next) and gain_next < threshold


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
        self._reference(reference_size)
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

    def progress(self, posterior: Predictive, history: Sequence[Mapping[str, Any]],
                 replay: Callable[[Sequence[Mapping[str, Any]]], Predictive], *, min_labels: int = GAIN_WINDOW,
                 reference_size: int = 2000) -> dict[str, float]:
        """The gain and the change per label over the last half of the labels.

        ``posterior`` (after ``history``, ``n`` labels) is compared on the reference subset with the
        predictions of the trace point at ``n/2`` labels (:func:`half_point`; replayed from a prefix of
        ``history`` where the trace has none close enough).

        Returns
        -------
        dict
            ``gain_per_label`` (:func:`prediction_gain` per label), ``change_per_label``
            (:func:`prediction_change` per label) and ``window`` (the labels in between); the rates are
            NaN before ``min_labels`` labels.
        """
        self._reference(reference_size)
        labels: dict[int, int] = {}
        for action in history:
            LabelBook.set_label(labels, action)
        n_now = len(labels)
        if n_now < max(min_labels, 2):
            return {"gain_per_label": float("nan"), "change_per_label": float("nan"), "window": 0}
        self._trace = [t for t in self._trace if t[0] < n_now]
        low, high = half_point(n_now)
        older = [t for t in self._trace if low <= t[0] <= high]
        if not older:  # none near enough: replay the point
            point = self._past_point(history, replay, high)
            self._trace = sorted([*self._trace, point], key=lambda t: t[0])
            older = [point]
        then = older[-1]
        probs = posterior.predict_proba(self.x[self._ref_idx])
        pred = probs.argmax(1)
        self._trace.append((n_now, float(probs.max(1).values.mean()), pred))
        dn = max(n_now - then[0], 1)
        return {"gain_per_label": prediction_gain(probs, then[2]) / dn,
                "change_per_label": prediction_change(pred, then[2]) / dn, "window": n_now - then[0]}

    def _reference(self, reference_size: int) -> None:
        if self._ref_idx is None:
            n = self.x.shape[0]
            gen = torch.Generator().manual_seed(derive_seed(self.seed, "reference"))
            self._ref_idx = torch.randperm(n, generator=gen)[: min(n, reference_size)].sort().values

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

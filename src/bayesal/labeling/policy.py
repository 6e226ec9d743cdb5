"""When a labeling session refits its head from scratch: the refit policy saved in its header.

A *fit point* is an action after which the posterior is the head trained from scratch on the labels
at that point (:func:`~bayesal.labeling.history.is_fit_point`): an explicit ``retrain``, or a ``tell``
that the policy marks ``retrain: true``. Each refit also re-selects what the posterior options leave
to the data (λ₀ and the predictive's spread with ``"cv"``). Two schedules, either or both:

* ``retrain_every``: after this many tells since the last fit point;
* ``reselect="doubling"``: when the number of labels reaches ``base · 2^k`` (``base``, ``2·base``,
  ``4·base``, …), so the cost of refitting stays proportional to the labels given while λ₀ and the
  spread follow the data as it grows.

Neither fires before labels of 2 classes exist (a head cannot be trained on one class). The decision
is logged with the event, so replaying a log never consults the policy.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bayesal.exceptions import InvalidInputError

from .history import LabelBook

__all__ = ["RefitPolicy", "RESELECT_SCHEDULES", "DEFAULT_RESELECT_BASE", "is_doubling_point"]

#: The re-selection schedules a session knows.
RESELECT_SCHEDULES = ("doubling",)

#: The default first fit point of the doubling schedule.
DEFAULT_RESELECT_BASE = 10


def is_doubling_point(n_labels: int, base: int) -> bool:
    """True if ``n_labels`` is ``base · 2^k`` for some ``k ≥ 0``."""
    if n_labels < base or n_labels % base:
        return False
    m = n_labels // base
    return m & (m - 1) == 0


@dataclass(frozen=True)
class RefitPolicy:
    """When a tell is a fit point.

    Parameters
    ----------
    retrain_every : int, optional
        Refit after this many tells since the last fit point (None: not on a count).
    reselect : {"doubling"}, optional
        Refit when the number of labels reaches ``base · 2^k`` (None: not on this schedule).
    base : int, default 10
        The doubling schedule's first fit point.
    """

    retrain_every: int | None = None
    reselect: str | None = None
    base: int = DEFAULT_RESELECT_BASE

    def __post_init__(self) -> None:
        if self.retrain_every is not None and (isinstance(self.retrain_every, bool)
                                               or not isinstance(self.retrain_every, int) or self.retrain_every < 1):
            raise InvalidInputError(f"retrain_every must be a positive integer or None, got {self.retrain_every!r}")
        if self.reselect is not None and self.reselect not in RESELECT_SCHEDULES:
            raise InvalidInputError(f"reselect must be one of {list(RESELECT_SCHEDULES)} or None, got {self.reselect!r}")
        if isinstance(self.base, bool) or not isinstance(self.base, int) or self.base < 1:
            raise InvalidInputError(f"reselect_base must be a positive integer, got {self.base!r}")

    def due(self, book: LabelBook, new_class: int) -> bool:
        """True if telling a new label of class ``new_class`` to ``book`` is a fit point."""
        if len(set(book.labels.values()) | {new_class}) < 2:
            return False
        if self.retrain_every is not None and book.tells_since_fit() + 1 >= self.retrain_every:
            return True
        return self.reselect == "doubling" and is_doubling_point(len(book.labels) + 1, self.base)

    def header_field(self) -> dict[str, Any] | None:
        """The header's ``reselect`` entry (``None`` without a re-selection schedule)."""
        return None if self.reselect is None else {"schedule": self.reselect, "base": self.base}

    @classmethod
    def from_header(cls, header: Mapping[str, Any]) -> RefitPolicy:
        """The policy a session header saved; headers written before ``reselect`` have none."""
        saved = header.get("reselect")
        if saved is None:
            return cls(header.get("retrain_every"))
        return cls(header.get("retrain_every"), saved.get("schedule"), saved.get("base", DEFAULT_RESELECT_BASE))

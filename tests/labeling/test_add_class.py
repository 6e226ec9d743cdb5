"""A class added mid-session: the posterior grows a row, every label and skip is kept, and it
survives a resume (the log's header holds the longer class list)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bayesal.exceptions import InvalidInputError
from bayesal.labeling import Session


def test_add_class_keeps_everything_and_grows_the_posterior(tmp_path: Path, clustered_pool) -> None:
    x, y, _, _ = clustered_pool(n=120, c=3)
    names = ["a", "b", "c"]
    with Session(x, names, random_state=0, state_dir=tmp_path / "s", background=False, retrain_every=5) as s:
        for i in range(12):
            s.tell(i, int(y[i]))
        s.skip(20)
        s.undo()
        s.skip(21)
        labels, skipped, events = s.labels, s.skipped, len(s.events)
        s.add_class("d")
        assert s.class_names == ["a", "b", "c", "d"] and s.num_classes == 4
        assert s.labels == labels and s.skipped == skipped and len(s.events) == events
        assert s.posterior.predict_proba(torch.as_tensor(x[:5], dtype=torch.float64)).shape == (5, 4)
        s.tell(30, "d")  # the new class takes answers at once
        s.undo()
        s.tell(30, "d")
        with pytest.raises(InvalidInputError, match="already"):
            s.add_class("d")
        with pytest.raises(InvalidInputError, match="non-empty"):
            s.add_class("  ")
        expected = s.predict_proba([40, 41])
    with Session.resume(tmp_path / "s", x, background=False) as again:
        assert again.class_names == ["a", "b", "c", "d"]
        assert again.labels == {**labels, 30: 3} and again.skipped == skipped
        assert torch.allclose(again.predict_proba([40, 41]), expected)
    with pytest.raises(InvalidInputError, match="in-memory"):
        Session(x, names).add_class("d")

"""A session from zero labels with ``cold_start="cover"``: typical, diverse items until every class
has a label, then the strategy; saved in the header, so a resume keeps it."""

from __future__ import annotations

from pathlib import Path

import pytest

from bayesal.data import load_dataset
from bayesal.exceptions import InvalidInputError
from bayesal.labeling import Session


@pytest.fixture(scope="module")
def bbc():
    return load_dataset("bbcnews")


def labels_to_cover(ds, mode: str, seed: int, cap: int = 40) -> int:
    s = Session(ds.train_features, ds.class_names, cold_start=mode, random_state=seed, background=False, fsync=False)
    n = 0
    while len(set(s.labels.values())) < ds.num_classes and n < cap:
        assert s.covering == (mode == "cover")
        i = s.query(1)[0]
        s.tell(i, int(ds.train_labels[i]))
        n += 1
    assert not s.covering
    return n


def test_cover_reaches_every_class_sooner_than_random(bbc) -> None:
    cover = [labels_to_cover(bbc, "cover", seed) for seed in range(3)]
    random = [labels_to_cover(bbc, "random", seed) for seed in range(3)]
    assert max(cover) <= 8  # 5 classes: about one label each
    assert sum(cover) < sum(random)


def test_cover_is_saved_and_resumed(tmp_path: Path, bbc) -> None:
    x = bbc.train_features
    with Session(x, bbc.class_names, cold_start="cover", random_state=1, state_dir=tmp_path / "s", background=False) as s:
        first = s.query(1)
        s.tell(first[0], int(bbc.train_labels[first[0]]))
        nxt = s.query(1)
        assert s.config["cold_start"] == "cover"
    with Session.resume(tmp_path / "s", x, background=False) as again:
        assert again.covering and again.query(1) == nxt  # the same pick after a resume
    plain = Session(x[:50], bbc.class_names, random_state=0)
    assert "cold_start" not in plain.config and not plain.covering  # the default header is unchanged
    with pytest.raises(InvalidInputError, match="cold_start"):
        Session(x[:50], bbc.class_names, cold_start="smart")


def test_cover_ends_when_a_class_stays_missing(clustered_pool) -> None:
    x, y, _, _ = clustered_pool(n=200, c=3)
    s = Session(x, ["a", "b", "never"], cold_start="cover", random_state=0, background=False)
    for _ in range(15):  # five per class, and no item is ever of class "never"
        assert s.covering
        i = s.query(1)[0]
        s.tell(i, int(y[i]) % 2)
    assert not s.covering and len(set(s.labels.values())) == 2

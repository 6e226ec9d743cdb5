"""Label-error review of a session: the leave-one-out doubt of each given label."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bayesal.exceptions import InvalidInputError
from bayesal.labeling import Session
from bayesal.laplace import leave_one_out

NAMES = ["ant", "bee", "cat"]


@pytest.fixture
def labeled(clustered_pool):
    """A session with 60 labels, 6 of them wrong (moved to the next class)."""
    x, y, _, _ = clustered_pool(n=200, seed=4)
    session = Session(x, NAMES, random_state=0, background=False)
    wrong = set(range(0, 60, 10))
    for i in range(60):
        session.tell(i, int((y[i] + 1) % 3) if i in wrong else int(y[i]))
    return session, y, wrong


def test_suspicious_ranks_the_wrong_labels_first(labeled):
    session, y, wrong = labeled
    top = session.suspicious(6)
    assert [r["index"] for r in top if r["index"] in wrong] == [r["index"] for r in top]
    assert {r["index"] for r in top} == wrong
    first = top[0]
    assert first["label"] == NAMES[first["label_index"]] == NAMES[session.labels[first["index"]]]
    assert len(first["probs"]) == 3 and abs(sum(first["probs"]) - 1) < 1e-9
    others = [q for k, q in enumerate(first["probs"]) if k != first["label_index"]]
    given = first["probs"][first["label_index"]]
    assert first["doubt"] == pytest.approx(max(others) / (max(others) + given)) and first["doubt"] > 0.5
    assert [r["doubt"] for r in top] == sorted((r["doubt"] for r in top), reverse=True)
    # the same numbers as the leave-one-out of the session's posterior
    idx = sorted(session.labels)
    loo = leave_one_out(session.posterior, session.features[idx], torch.tensor([session.labels[i] for i in idx]))
    doubt = session.label_doubt()
    np.testing.assert_allclose([doubt[i] for i in idx], loo.doubt.numpy(), rtol=0, atol=1e-12)


def test_correcting_a_doubted_label_clears_its_doubt(labeled):
    session, y, wrong = labeled
    first = session.suspicious(1)[0]
    before = first["doubt"]
    session.correct(first["index"], int(y[first["index"]]))
    assert session.label_doubt()[first["index"]] < 0.5 < before
    assert first["index"] not in {r["index"] for r in session.suspicious(5)}


def test_exclude_and_cache(labeled):
    session, _, wrong = labeled
    top = session.suspicious(3)
    assert session.label_doubts() is session.label_doubts()  # one computation per posterior state
    rest = session.suspicious(3, exclude={top[0]["index"]})
    assert rest[0] == top[1]
    assert len(session.suspicious(1000)) == 60


def test_no_labels_and_bad_k(clustered_pool):
    x, _, _, _ = clustered_pool(n=30)
    session = Session(x, NAMES, random_state=0, background=False)
    assert session.suspicious(3) == [] and session.label_doubt() == {}
    for k in (0, -1, 1.5, True):
        with pytest.raises(InvalidInputError):
            session.suspicious(k)


def test_each_answer_reranks_incrementally_as_the_full_computation(clustered_pool):
    """Past the early phase, an answer absorbed as an update re-ranks through the rank-1 cache: the same
    doubts as the full leave-one-out of the session's posterior; a refit falls back to the full one."""
    from bayesal.labeling.review import SessionReview

    x, y, _, _ = clustered_pool(n=300, seed=6)
    session = Session(x, NAMES, random_state=0, background=False, reselect="doubling")
    for i in range(90):
        session.tell(i, int(y[i]) if i % 9 else int((y[i] + 1) % 3))
    session.label_doubt()
    start = session._doubt_incremental
    for i in range(90, 100):
        session.tell(i, int(y[i]))
        got = session.label_doubt()
        idx = sorted(session.labels)
        loo = leave_one_out(session.posterior, session.features[idx], torch.tensor([session.labels[j] for j in idx]))
        np.testing.assert_allclose([got[j] for j in idx], loo.doubt.numpy(), rtol=0, atol=1e-7)
    assert session._doubt_incremental - start == 10  # every answer past 80 labels (no fit point up to 160)
    session.retrain()
    session.tell(100, int(y[100]))
    before = session._doubt_incremental
    session.label_doubt()
    assert session._doubt_incremental == before  # after a refit: computed in full
    assert isinstance(session, SessionReview)

"""The speculative next item: the picks equal those of the non-speculative loop, exactly."""

from __future__ import annotations

import numpy as np
import pytest

from bayesal.labeling.session import Session
from bayesal.serve import LabelingService

NAMES = ["a", "b", "c", "d"]


def _pool(n: int = 400, d: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(len(NAMES), d)) * 2
    y = rng.integers(0, len(NAMES), n)
    return (centers[y] + rng.normal(size=(n, d))).astype(np.float32), y


def _service(x: np.ndarray, speculate: bool, **session_kw) -> LabelingService:
    session = Session(x, NAMES, random_state=3, candidate_size=150, background=False, **session_kw)
    return LabelingService(session, name="t", speculate=speculate, lease_seconds=0)


@pytest.mark.parametrize("session_kw", [{}, {"reselect": "doubling", "strategy": "entropy"}],
                         ids=["margin", "entropy-with-fit-points"])
def test_speculative_picks_equal_the_non_speculative_loop(session_kw) -> None:
    x, y = _pool()
    plain, spec = _service(x, False, **session_kw), _service(x, True, **session_kw)
    try:
        card_p, card_s = plain.next_item("t1"), spec.next_item("t1")
        for _ in range(40):
            assert card_s["index"] == card_p["index"]
            assert card_s["top"] == card_p["top"]
            assert spec.speculator is not None and spec.speculator.wait(timeout=60)  # the person reads
            i = card_p["index"]
            label = NAMES[int(y[i])]
            card_p = plain.answer(i, label, "t1")["next"]
            card_s = spec.answer(i, label, "t1")["next"]
        assert card_s["index"] == card_p["index"]
        assert spec.session.labels == plain.session.labels
        # the speculation was used: every answer past the cold start that was no fit point found its picks
        assert spec.speculator.hits >= 20
    finally:
        plain.close()
        spec.close()


def test_a_wrong_guess_or_an_unfinished_speculation_falls_back_to_the_query() -> None:
    x, y = _pool(seed=1)
    plain, spec = _service(x, False), _service(x, True)
    assert spec.speculator is not None
    spec.speculator.max_classes = 1  # only the most probable answer is speculated
    try:
        card_p, card_s = plain.next_item("t1"), spec.next_item("t1")
        for step in range(30):
            assert card_s["index"] == card_p["index"]
            if step % 3 == 0:
                spec.speculator.cancel()  # the answer comes before anything was speculated
            else:
                spec.speculator.wait(timeout=60)
            i = card_p["index"]
            label = NAMES[(int(y[i]) + step) % len(NAMES)]  # often not the model's guess
            card_p = plain.answer(i, label, "t1")["next"]
            card_s = spec.answer(i, label, "t1")["next"]
        assert card_s["index"] == card_p["index"]
        assert spec.speculator.misses > 0 and spec.speculator.hits > 0
    finally:
        plain.close()
        spec.close()


def test_view_after_tell_is_the_state_tell_leads_to() -> None:
    x, y = _pool(seed=2)
    s = Session(x, NAMES, random_state=5, candidate_size=100, background=False)
    try:
        for i in range(6):
            s.tell(i, int(y[i]))
        view = s.query_view()
        after = s.view_after_tell(view, 10, 2)
        assert after is not None
        predicted = s.query_in(after, 3)
        s.tell(10, 2)
        assert s.query(3) == predicted
        now = s.query_view()
        assert dict(now.labels) == dict(after.labels) and now.n_events == after.n_events
        assert (now.posterior.mean == after.posterior.mean).all()
    finally:
        s.close()


def test_the_next_image_is_rendered_while_the_current_one_is_shown(monkeypatch) -> None:
    import threading

    from bayesal.data import Thumbnails

    x, y = _pool(n=200, seed=3)
    images = np.random.default_rng(0).integers(0, 255, size=(len(x), 8, 8), dtype=np.uint8)
    rendered_in: dict[int, str] = {}
    real = Thumbnails.png

    def spy(self, index):
        rendered_in.setdefault(int(index), threading.current_thread().name)
        return real(self, index)

    monkeypatch.setattr(Thumbnails, "png", spy)
    session = Session(x, NAMES, items=images, random_state=3, candidate_size=100, background=False)
    svc = LabelingService(session, name="t", lease_seconds=0)
    try:
        card = svc.next_item("t1")
        ahead = 0
        for _ in range(12):
            assert svc.speculator is not None and svc.speculator.wait(timeout=60)
            i = card["index"]
            card = svc.answer(i, NAMES[int(y[i])], "t1")["next"]
            assert card["item"] == {"kind": "image", "src": svc.thumbnail_url(card["index"])}
            ahead += rendered_in.get(card["index"]) == "bayesal-speculate"
            assert svc.thumbnail(svc.thumbnails.key, card["index"]).startswith(b"\x89PNG")
        assert ahead >= 8  # past the cold start, the item shown next was rendered ahead of its answer
    finally:
        svc.close()


@pytest.mark.parametrize("session_kw", [{}, {"reselect": "doubling", "strategy": "entropy"}, {"background": True}],
                         ids=["margin", "entropy-with-fit-points", "background-refits"])
def test_whole_pool_speculative_picks_equal_the_non_speculative_loop(monkeypatch, session_kw) -> None:
    """--candidate-size 0 on a pool large enough for the pool moments (the threshold lowered to this pool):
    the speculated picks, from moments stepped once per answer, equal the loop's that queries after each."""
    import bayesal.labeling.moments as moments

    monkeypatch.setattr(moments, "WHOLE_POOL_MIN_ROWS", 100)
    x, y = _pool(n=600, seed=4)
    kw = {"background": False, **session_kw}

    def service(speculate: bool) -> LabelingService:
        session = Session(x, NAMES, random_state=3, candidate_size=None, **kw)
        return LabelingService(session, name="t", speculate=speculate, lease_seconds=0)

    plain, spec = service(False), service(True)
    try:
        card_p, card_s = plain.next_item("t1"), spec.next_item("t1")
        for step in range(40):
            assert card_s["index"] == card_p["index"]
            assert card_s["top"] == card_p["top"]
            if step % 7 == 3:
                spec.speculator.cancel()  # an answer faster than the speculation: the query steps itself
            else:
                assert spec.speculator is not None and spec.speculator.wait(timeout=60)
            i = card_p["index"]
            label = NAMES[int(y[i])] if step % 5 else NAMES[(int(y[i]) + 1) % len(NAMES)]
            card_p = plain.answer(i, label, "t1")["next"]
            card_s = spec.answer(i, label, "t1")["next"]
            if session_kw.get("background"):  # a refit swapped in between two answers, in both
                plain.session.wait_refit()
                spec.session.wait_refit()
        assert card_s["index"] == card_p["index"]
        assert spec.speculator.hits >= 15
        # the moments were stepped, not rebuilt, for most answers (a rebuild per refit or cold start)
        pm = spec.session._pool_moments()
        assert pm.steps + pm.half_steps >= 20 and pm.rebuilds <= 12
    finally:
        plain.close()
        spec.close()


def test_whole_pool_moments_pick_what_the_posterior_picks(monkeypatch) -> None:
    """The stepped float32 moments are the posterior's own moments up to round-off: the same top picks
    as a query that scores every row from the posterior (the pool moments off)."""
    import bayesal.labeling.moments as moments

    x, y = _pool(n=800, seed=5)
    fast = Session(x, NAMES, random_state=3, candidate_size=None, background=False)
    exact = Session(x, NAMES, random_state=3, candidate_size=None, background=False)
    try:
        agree = 0
        for _ in range(30):
            monkeypatch.setattr(moments, "WHOLE_POOL_MIN_ROWS", 100)
            got = fast.query(3)
            monkeypatch.setattr(moments, "WHOLE_POOL_MIN_ROWS", 10**9)
            want = exact.query(3)
            agree += got == want
            fast.tell(want[0], int(y[want[0]]))
            exact.tell(want[0], int(y[want[0]]))
        assert agree >= 28
        pm = fast._pool_moments()
        # the early phase's exact mean came from the span of the told features, never from the pool anew
        assert pm.half_steps >= 10 and pm.full_logits == 0 and pm.rebuilds <= 3
    finally:
        fast.close()
        exact.close()


def test_whole_pool_the_likeliest_answers_next_item_is_prepared_ahead(monkeypatch) -> None:
    """While an item is read, the pool's products with the item picked after its likeliest answer are
    computed too: when that answer comes, the next item's speculation finds them ready."""
    import bayesal.labeling.moments as moments

    monkeypatch.setattr(moments, "WHOLE_POOL_MIN_ROWS", 100)
    x, y = _pool(n=600, seed=6)
    session = Session(x, NAMES, random_state=3, candidate_size=None, background=False)
    svc = LabelingService(session, name="t", lease_seconds=0)
    assert svc.speculator is not None
    try:
        card, prepared = svc.next_item("t1"), 0
        for step in range(20):
            assert svc.speculator.wait(timeout=60)  # the person reads
            i = card["index"]
            # true labels past the cold start (random picks), then the model's likeliest answer
            label = int(y[i]) if step < 8 else int(session.predict_proba([i])[0].argmax())
            card = svc.answer(i, NAMES[label], "t1")["next"]
            # checked at once: the new item's own speculation waits its start delay before it begins
            view = session.query_view()
            prepared += step >= 8 and session._pool_moments()._products.get((view.key, card["index"])) is not None
        assert prepared >= 8
    finally:
        svc.close()

"""The accuracy estimate of a session, its audit stream and the stop recommendation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from bayesal.exceptions import CorruptStateError, InvalidInputError
from bayesal.labeling import STOP_NAME, stop_summary
from bayesal.labeling.schema import check_event, check_header
from bayesal.labeling.session import Session
from bayesal.labeling.signals import (
    DEFAULT_STOP_GAIN,
    StoppingSignals,
    accuracy_interval,
    half_point,
    prediction_change,
    prediction_gain,
    stop_recommended,
)
from bayesal.laplace import HeadConfig, PosteriorOptions, leave_one_out

OPTS = PosteriorOptions(head=HeadConfig(epochs=10), prior_precision=1.0)


# ------------------------------------------------------------------ the estimator's math
def test_model_interval_is_the_poisson_binomial_one():
    c = torch.tensor([0.9, 0.6, 0.75, 0.99, 0.5] * 8, dtype=torch.float64)
    est = accuracy_interval(c, level=0.9)
    half = stats.norm.ppf(0.95) * math.sqrt(float((c * (1 - c)).sum())) / 40
    assert est.method == "model" and est.n_audit == 0 and est.pool_size == 40
    assert est.accuracy == pytest.approx(float(c.mean())) == est.model_accuracy
    assert (est.low, est.high) == (pytest.approx(float(c.mean()) - half), pytest.approx(float(c.mean()) + half))


def test_audit_interval_is_the_prediction_powered_one():
    rng = np.random.default_rng(0)
    c = rng.uniform(0.4, 1.0, size=200)
    hits = np.array([1, 1, 0, 1, 1, 1, 0, 1, 1, 1], dtype=float)
    ac = rng.uniform(0.4, 1.0, size=10)
    est = accuracy_interval(torch.tensor(c), torch.tensor(hits), torch.tensor(ac), level=0.8)
    r = hits - ac
    var = max(r.var(ddof=1), (ac * (1 - ac)).mean()) / 10 + (c * (1 - c)).sum() / 200**2
    half = stats.t.ppf(0.9, 9) * math.sqrt(var)
    assert est.method == "audit" and est.n_audit == 10 and est.level == 0.8
    assert est.accuracy == pytest.approx(c.mean() + r.mean())
    assert est.low == pytest.approx(c.mean() + r.mean() - half) and est.high == pytest.approx(min(c.mean() + r.mean() + half, 1))


def test_two_kinds_of_prediction_give_the_hull_of_their_intervals():
    c = torch.linspace(0.5, 1.0, 100, dtype=torch.float64)
    hits = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [1.0, 1.0], [1.0, 0.0]], dtype=torch.float64)
    conf = torch.tensor([[0.9, 0.6], [0.8, 0.7], [0.6, 0.5], [0.95, 0.9], [0.7, 0.8]], dtype=torch.float64)
    est = accuracy_interval(c, hits, conf)
    one = [accuracy_interval(c, hits[:, k], conf[:, k]) for k in range(2)]
    assert est.method == "audit" and est.n_audit == 5
    assert est.accuracy == pytest.approx((one[0].accuracy + one[1].accuracy) / 2)
    assert est.low == min(o.low for o in one) and est.high == max(o.high for o in one)


def test_audit_interval_floors_the_spread_and_clips_to_probabilities():
    c = torch.full((50,), 0.99, dtype=torch.float64)
    est = accuracy_interval(c, torch.ones(4, dtype=torch.float64), torch.full((4,), 0.9, dtype=torch.float64))
    assert est.accuracy == 1.0 and est.high == 1.0 and est.low < 1.0  # identical rectifiers: no zero width
    one = accuracy_interval(c, torch.ones(1, dtype=torch.float64), torch.full((1,), 0.9, dtype=torch.float64))
    assert one.method == "model"  # one audit label says nothing about the spread
    with pytest.raises(ValueError, match="level"):
        accuracy_interval(c, level=1.0)


def test_prediction_gain_and_stop():
    probs = torch.tensor([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]], dtype=torch.float64)
    assert prediction_gain(probs, torch.tensor([0, 1, 0])) == 0.0  # same predictions: nothing gained
    assert prediction_gain(probs, torch.tensor([1, 1, 1])) == pytest.approx((0.4 + 0 + 0.2) / 3)
    assert stop_recommended(0.001, 0.005) and not stop_recommended(0.01, 0.005)
    assert not stop_recommended(float("nan"), 0.005) and not stop_recommended(0.0, None)


def test_prediction_change_bounds_the_gain_and_the_half_point():
    probs = torch.tensor([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5]], dtype=torch.float64)
    now = probs.argmax(1)
    assert prediction_change(now, now) == 0.0
    before = torch.tensor([1, 1, 1, 0])
    assert prediction_change(now, before) == pytest.approx(2 / 4)
    # the accuracy can only move where a prediction moves: |gain| ≤ change, whatever the truth
    for truth in ([0, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 1]):
        t = torch.tensor(truth)
        moved = float((now == t).double().mean() - (before == t).double().mean())
        assert abs(moved) <= prediction_change(now, before)
    assert half_point(100) == (40, 50) and half_point(1000) == (450, 500) and half_point(51) == (15, 25)


class _Scripted:
    """A predictive whose predictions on the reference items are a function of the label count."""

    def __init__(self, table, n_labels):
        self.table, self.n = table, n_labels

    def predict_proba(self, x):
        pred = self.table(self.n)[x[:, 0].long()]
        return torch.nn.functional.one_hot(pred, 3).to(torch.float64) * 0.8 + 0.2 / 3


def _tells(n):
    return [{"op": "tell", "index": i, "label": 0} for i in range(n)]


def test_the_stop_rule_on_a_synthetic_trace():
    """Item ``i`` of the reference set changes its prediction once, when it is learned at ``settle[i]``
    labels; the share learned after ``n`` labels falls like ``1/n`` (``20/n``). The expected gain of the next 50
    labels is the share changed since ``n/2`` per label, times 50; the stop fires where the learning
    curve of this trace says it should, and a session asked only then (a resume) replays the point at
    ``n/2`` and agrees."""
    r = 1000
    settle = (20 / torch.rand(r, generator=torch.Generator().manual_seed(0))).clamp(max=10_000).long()
    x = torch.arange(r, dtype=torch.float64).reshape(-1, 1)

    def table(n):
        return (settle > n).long()  # class 1 until learned, then 0

    def expected(n, then):
        return prediction_change(table(n), table(then)) / (n - then) * 50

    sig = StoppingSignals(x, seed=0)
    replay = lambda h: _Scripted(table, len(h))  # noqa: E731
    got = {}
    for n in range(10, 1001, 10):
        got[n] = sig.progress(_Scripted(table, n), _tells(n), replay, reference_size=r)
    assert math.isnan(got[40]["change_per_label"]) and got[40]["window"] == 0  # before 50 labels
    for n in (100, 400, 1000):  # the point at n/2 is in the trace: no replay needed
        assert got[n]["window"] == n - n // 2
        assert got[n]["change_per_label"] * 50 == pytest.approx(expected(n, n // 2))
    first = next(n for n in got if stop_recommended(got[n]["change_per_label"] * 50, 0.05))
    # the share learned in (n/2, n] is about 20/n: the rate times 50 is about 2000/n², below 0.05 from n = 200
    assert 170 <= first <= 240
    # a fresh trace asked only now (e.g. after a resume) replays the point at n/2 and agrees
    once = StoppingSignals(x, seed=0).progress(_Scripted(table, first), _tells(first), replay, reference_size=r)
    assert once["change_per_label"] * 50 == pytest.approx(expected(first, first // 2))
    assert stop_recommended(once["change_per_label"] * 50, 0.05)


def test_audit_interval_covers_a_miscalibrated_model_in_simulation():
    """A model whose confidence is far from its accuracy (overconfident): the model's own interval
    misses the pool accuracy, the prediction-powered one covers it at about its level."""
    rng = np.random.default_rng(1)
    covered, model_covered, runs = 0, 0, 300
    for _ in range(runs):
        n = 2000
        conf = rng.uniform(0.5, 1.0, size=n)
        p_true = np.clip(conf - 0.15, 0.0, 1.0)  # overconfident by 0.15
        correct = rng.random(n) < p_true
        audit = rng.choice(n, size=40, replace=False)
        rest = np.setdiff1d(np.arange(n), audit)
        truth = correct[rest].mean()
        est = accuracy_interval(torch.tensor(conf[rest]), torch.tensor(correct[audit], dtype=torch.float64),
                                torch.tensor(conf[audit]))
        covered += est.low <= truth <= est.high
        model = accuracy_interval(torch.tensor(conf[rest]))
        model_covered += model.low <= truth <= model.high
    assert covered / runs >= 0.85
    assert model_covered / runs < 0.05


# ------------------------------------------------------------------ the session's audit stream
def _session(pool, tmp_path, **kw):
    x, _, _, _ = pool
    return Session(x, 3, strategy="margin", options=OPTS, random_state=3, background=False,
                   state_dir=tmp_path / "s", fsync=False, candidate_size=None, **kw)


def _label(session, y, n):
    for _ in range(n):
        i = session.query()[0]
        session.tell(i, int(y[i]))


@pytest.fixture(scope="module")
def pool(clustered_pool):
    return clustered_pool(n=300, d=5, spread=2.0, seed=4)


def test_audit_labels_are_logged_with_the_prediction_before_the_label(pool, tmp_path):
    x, y, _, _ = pool
    s = _session(pool, tmp_path, audit_rate=0.3)
    assert s.audit_rate == 0.3 and s.config["audit_rate"] == 0.3
    seen = []
    for _ in range(60):
        i = s.query()[0]
        pick = s.audit_pick()
        before = s.predict_proba([i])[0]
        s.tell(i, int(y[i]))
        ev = s.events[-1]
        assert bool(ev.get("audit")) == (pick == i)
        if pick == i:
            assert ev["audit_pred"] == int(before.argmax()) and ev["audit_p"] == pytest.approx(float(before.max()))
            seen.append(i)
    audits = s.audit_labels()
    assert [a["index"] for a in audits] == seen and 8 <= len(seen) <= 30  # about 30 % of 60
    assert all(a["label"] == y[a["index"]] for a in audits)
    # an audit pick heads a batch query; the strategy picks the rest among the others
    while s.audit_pick() is None:  # each event draws the audit stream anew
        s.skip(s.query()[0])
    pick = s.audit_pick()
    batch = s.query(3)
    assert batch[0] == pick and len(set(batch)) == 3
    s.close()


def test_audit_labels_survive_resume_and_undo(pool, tmp_path):
    x, y, _, _ = pool
    s = _session(pool, tmp_path, audit_rate=0.25)
    _label(s, y, 40)
    audits, est, nxt = s.audit_labels(), s.estimate(), s.query(2)
    s.close()
    r = Session.resume(tmp_path / "s", x, background=False, fsync=False)
    assert r.audit_rate == 0.25 and r.audit_labels() == audits and r.query(2) == nxt
    est_r = r.estimate()
    assert {k: est_r[k] for k in ("accuracy", "low", "high", "n_audit")} == pytest.approx(
        {k: est[k] for k in ("accuracy", "low", "high", "n_audit")})
    # undoing an audit answer takes it out of the audit labels; redo brings it back
    while not r.history[-1].get("audit"):
        r.undo()
    n = len(r.audit_labels())
    r.undo()
    assert len(r.audit_labels()) == n - 1
    r.redo()
    assert len(r.audit_labels()) == n
    # a correction changes the label the audit is scored with
    a = r.audit_labels()[0]
    r.correct(a["index"], (a["label"] + 1) % 3)
    assert r.audit_labels()[0]["label"] == (a["label"] + 1) % 3
    r.close()
    # the replayed (recovered) session has the same audit labels
    rec = Session.recover(tmp_path / "s", x, background=False, fsync=False)
    assert len(rec.audit_labels()) == n and rec.audit_labels()[0]["label"] == (a["label"] + 1) % 3
    rec.close()


def test_without_audit_rate_queries_and_headers_are_unchanged(pool, tmp_path):
    x, y, _, _ = pool
    a = _session(pool, tmp_path / "a")
    b = Session(x, 3, strategy="margin", options=OPTS, random_state=3, background=False, fsync=False,
                candidate_size=None, state_dir=tmp_path / "b" / "s")
    assert "audit_rate" not in a.config and a.audit_pick() is None
    for _ in range(15):
        i = a.query()[0]
        assert b.query()[0] == i
        a.tell(i, int(y[i]))
        b.tell(i, int(y[i]))
    assert not any("audit" in e for e in a.events)
    a.close()
    b.close()


def test_estimate_rectifies_with_the_logged_and_the_leave_one_out_predictions(pool, tmp_path):
    x, y, _, _ = pool
    s = _session(pool, tmp_path, audit_rate=0.3)
    _label(s, y, 30)
    est = s.estimate()
    audits = s.audit_labels()
    idx = [a["index"] for a in audits]
    ya = torch.tensor([a["label"] for a in audits])
    conf, pred = leave_one_out(s.posterior, s.features[idx], ya).probs.max(1)
    logged_hit = torch.tensor([float(a["predicted"] == a["label"]) for a in audits])
    logged_conf = torch.tensor([a["confidence"] for a in audits])
    rest = [i for i in range(x.shape[0]) if i not in s.labels]
    conf_rest = s.predict_proba(rest).max(1).values
    direct = accuracy_interval(conf_rest, torch.stack([(pred == ya).double(), logged_hit], 1),
                               torch.stack([conf, logged_conf], 1))
    # the mean of two rectifiers per label: the point estimate is the model's plus their mean
    r = ((pred == ya).double() - conf + logged_hit - logged_conf) / 2
    assert direct.accuracy == pytest.approx(min(float(conf_rest.mean() + r.mean()), 1.0))
    assert est["method"] == "audit" and est["n_audit"] == len(audits) >= 2
    assert (est["accuracy"], est["low"], est["high"]) == pytest.approx((direct.accuracy, direct.low, direct.high))
    assert est["pool_size"] == len(rest) and est["audit_rate"] == 0.3
    s.close()


def test_estimate_without_audits_and_the_stop(pool, tmp_path):
    x, y, _, _ = pool
    s = _session(pool, tmp_path, stop_when_gain_below=10.0)
    _label(s, y, 20)
    est = s.estimate()
    assert est["method"] == "model" and est["n_audit"] == 0 and est["audit_rate"] == 0.0
    assert math.isnan(est["expected_gain"]) and not est["stop"]  # fewer labels than the gain window
    _label(s, y, 35)
    est = s.estimate()
    # the share of the predictions changed per label since the model at half the labels, times 50
    assert est["gain_window"] == 55 - 55 // 2 and 0 <= est["change_per_label"] <= 1 / est["gain_window"]
    assert est["expected_gain"] == pytest.approx(50 * est["change_per_label"])
    assert est["gain_per_label"] <= est["change_per_label"]  # the model's own view of the gain is bounded by the change
    assert est["stop"] and est["stop_threshold"] == 10.0
    s.stop_when_gain_below = est["expected_gain"]
    assert not s.estimate()["stop"]  # below, not at
    s.stop_when_gain_below = est["expected_gain"] + 1e-9
    assert s.estimate()["stop"]
    s.stop_when_gain_below = None
    assert not s.estimate()["stop"]
    with pytest.raises(InvalidInputError, match="stop_when_gain_below"):
        s.stop_when_gain_below = -1.0
    body = json.loads(stop_summary(s))
    assert body["estimate"]["n_labels"] == 55 and body["estimate"]["stop"] is False
    assert STOP_NAME == "stop.json"
    s.close()


def test_gain_after_resume_replays_the_point_at_half_the_labels(pool, tmp_path):
    x, y, _, _ = pool
    s = _session(pool, tmp_path)
    assert s.stop_when_gain_below == DEFAULT_STOP_GAIN
    _label(s, y, 60)
    est = s.estimate()
    s.close()
    r = Session.resume(tmp_path / "s", x, background=False, fsync=False)
    est_r = r.estimate()
    for key in ("gain_per_label", "change_per_label", "expected_gain", "gain_window"):
        assert est_r[key] == pytest.approx(est[key], abs=1e-9)
    r.close()


def test_bad_audit_rates_are_refused(pool, tmp_path):
    x, _, _, _ = pool
    for rate in (1.0, -0.1, float("nan"), True):
        with pytest.raises(InvalidInputError, match="audit_rate"):
            Session(x, 3, audit_rate=rate)
    s = Session(x, 3, audit_rate=0.1, options=OPTS)
    header = {**s.config, "audit_rate": 2.0}
    with pytest.raises(CorruptStateError, match="audit_rate"):
        check_header(header, "h")
    with pytest.raises(CorruptStateError, match="audit_p"):
        check_event({"op": "tell", "index": 1, "label": 0, "audit": True, "audit_pred": 0, "audit_p": 1.5, "seq": 1}, 1, "log")

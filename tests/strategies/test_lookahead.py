"""Look-ahead strategies: closed forms against explicit updates, and toy problems (docs/method.md §5)."""

import pytest
import torch

from bayesal import LastLayerLaplace
from bayesal.exceptions import InvalidInputError
from bayesal.laplace.predictive import mean_field_probs
from bayesal.laplace.update import PAPER_OPTIONS, batch_update_reference
from bayesal.strategies import ExpectedLogLossReduction, LabeledSet, OracleLookahead

C, D = 3, 6


@pytest.fixture(scope="module", params=["gaussian", "categorical"])
def setup(request):
    g = torch.Generator().manual_seed(3)
    n = 80
    centers = torch.randn(C, D, generator=g, dtype=torch.float64) * 1.5
    y = torch.arange(n) % C
    x = centers[y] + torch.randn(n, D, generator=g, dtype=torch.float64)
    w = torch.randn(C, D, generator=g, dtype=torch.float64) * 0.5
    b = torch.randn(C, generator=g, dtype=torch.float64) * 0.1
    # one step: the closed form the risk table uses for every fantasized label
    post = LastLayerLaplace(curvature=request.param, gamma=10.0, steps=1).fit(x[:15], y[:15], weight=w, bias=b)
    return post, LabeledSet(x[:15], y[:15]), x[15:55], y[15:55], x[55:], y[55:]


@pytest.mark.parametrize("loss", ["log", "zero_one"])
def test_risk_table_equals_explicit_updates(setup, loss):
    post, _, xc, _, ref, _ = setup
    ell = ExpectedLogLossReduction(loss=loss, chunk_elements=500)  # forces several blocks
    z_c, v_c = post.logits(xc), post.logit_variance(xc)
    curv = torch.ones(xc.shape[0], dtype=torch.float64)
    if post.curvature == "categorical":
        pm = torch.softmax(z_c, 1).max(1).values
        curv = pm * (1 - pm)
    k_rc = ref @ post.covariance_ @ xc.T
    table = ell.risk_table(post.gamma, post.lambda_mf, z_c, v_c, curv, post.logits(ref), post.logit_variance(ref), k_rc)
    for i in (0, 7, 21):
        for y in range(C):
            p = post.update(xc[i : i + 1], torch.tensor([y]), gamma=10.0).predict_proba(ref)
            risk = -(p * p.log()).sum(1).mean() if loss == "log" else (1 - p.max(1).values).mean()
            torch.testing.assert_close(table[i, y], risk, atol=1e-10, rtol=0)


def test_batch_update_reference_equals_woodbury(setup):
    post, _, xc, yc, ref, _ = setup
    idx = torch.tensor([3, 9, 11, 30])
    xb = xc[idx]
    z_b = post.logits(xb)
    probs = torch.softmax(z_b, 1)
    curv = torch.ones(4, dtype=torch.float64)
    if post.curvature == "categorical":
        curv = probs.max(1).values * (1 - probs.max(1).values)
    onehot = torch.nn.functional.one_hot(yc[idx], C).double()
    sig = post.covariance_
    z, v = batch_update_reference(post.logits(ref), post.logit_variance(ref), ref @ sig @ xb.T, xb @ sig @ xb.T,
                                  onehot, probs, curv, 10.0)
    new = post.update(xb, yc[idx], gamma=10.0)
    torch.testing.assert_close(z, new.logits(ref), atol=1e-10, rtol=0)
    torch.testing.assert_close(v, new.logit_variance(ref), atol=1e-10, rtol=0)


def test_ell_batch_equals_its_own_greedy_steps(setup):
    """Pick 2 = argmax of the utility recomputed on the posterior updated with the expected label."""
    post, lab, xc, *_ = setup
    ell = ExpectedLogLossReduction(reference=xc[:20])
    res = ell.query(post, xc, lab, 2, torch.Generator().manual_seed(0))
    i = int(res.indices[0])
    p = post.predict_proba(xc[i : i + 1])
    upd = post.update(xc[i : i + 1], p, gamma=10.0)
    keep = [k for k in range(xc.shape[0]) if k != i]
    one = ell.query(upd, xc[keep], lab, 1, torch.Generator().manual_seed(0))
    assert keep[int(one.indices[0])] == int(res.indices[1])
    torch.testing.assert_close(one.utilities[0], res.utilities[1], atol=1e-9, rtol=0)
    assert ell.last_stats["candidates_per_second"] > 0


def _toy_posterior():
    """2 classes separated along e1 only; the labeled points are on e1, so Σ is diagonal."""
    w = torch.zeros(2, 3, dtype=torch.float64)
    w[0, 0], w[1, 0] = 1.0, -1.0
    lx = torch.tensor([[3.0, 0, 0], [-3.0, 0, 0]], dtype=torch.float64)
    ly = torch.tensor([0, 1])
    return LastLayerLaplace(**PAPER_OPTIONS).fit(lx, ly, weight=w), LabeledSet(lx, ly)


def test_ell_picks_the_instance_that_informs_the_reference():
    post, lab = _toy_posterior()
    # reference: ambiguous points near the boundary, spread along e2 only a little
    g = torch.Generator().manual_seed(0)
    ref = torch.zeros(40, 3, dtype=torch.float64)
    ref[:, 0] = 0.3 * torch.randn(40, generator=g, dtype=torch.float64)
    ref[:, 1] = 0.05 * torch.randn(40, generator=g, dtype=torch.float64)
    cands = torch.tensor([[0, 0, 2.0], [0, 0, -2.0], [0.1, 0, 0], [0, 0, 1.0], [0, 0, 3.0]], dtype=torch.float64)
    res = ExpectedLogLossReduction(reference=ref).query(post, cands, lab, 1, torch.Generator().manual_seed(0))
    assert int(res.indices[0]) == 2
    assert float(res.utilities[0]) > 0


def test_oracle_lookahead_picks_the_helpful_true_label():
    post, lab = _toy_posterior()
    # the reference set lies on e2 with label 0, where the model has no opinion yet
    ref = torch.tensor([[0, 1.0, 0], [0, 1.2, 0], [0, 0.8, 0]], dtype=torch.float64)
    ref_y = torch.zeros(3, dtype=torch.long)
    cands = torch.tensor([[0, 0, 1.0], [0, 1.0, 0], [0, 1.1, 0], [0, 0, -1.0], [0, 0, 2.0]], dtype=torch.float64)
    cand_y = torch.tensor([0, 0, 1, 1, 1])  # index 1 helps, index 2 hurts, the rest are irrelevant
    strat = OracleLookahead(ref, ref_y, n_batches=60)
    res = strat.query_with_labels(post, cands, lab, 1, torch.Generator().manual_seed(0), cand_y)
    assert res.indices.tolist() == [1]
    assert float(res.utilities[0]) > 0
    assert strat.last_stats["batch_cross_entropy"].shape == (60,)


def test_oracle_lookahead_needs_labels(setup):
    post, lab, xc, yc, ref, ref_y = setup
    with pytest.raises(InvalidInputError, match="candidate_labels"):
        OracleLookahead(ref, ref_y, n_batches=3).query_with_labels(post, xc, lab, 2, torch.Generator().manual_seed(0),
                                                               None)
    assert not hasattr(OracleLookahead(ref, ref_y, n_batches=3), "query")  # no label-free entry point
    with pytest.raises(InvalidInputError, match="differ in length"):
        OracleLookahead(ref, ref_y[:-1])


def test_oracle_lookahead_best_batch_is_best_score(setup):
    post, lab, xc, yc, ref, ref_y = setup
    strat = OracleLookahead(ref, ref_y, n_batches=9)
    res = strat.query_with_labels(post, xc, lab, 3, torch.Generator().manual_seed(1), yc)
    upd = post.update(xc[res.indices], yc[res.indices], gamma=10.0)
    p = upd.predict_proba(ref)
    ce = -p.gather(1, ref_y[:, None]).log().mean()
    torch.testing.assert_close(ce.to(torch.float64), strat.last_stats["batch_cross_entropy"].min(), atol=1e-10, rtol=0)
    assert torch.isclose(mean_field_probs(post.logits(ref), post.logit_variance(ref), post.lambda_mf).sum(1),
                         torch.ones(ref.shape[0], dtype=torch.float64)).all()


@pytest.mark.parametrize("loss", ["log", "zero_one"])
def test_one_hot_shift_risk_is_stable_for_extreme_logits(loss):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(5, 7, 4, generator=g, dtype=torch.float64) * 40
    base[0, 0] = torch.tensor([30.0, 30.0, -5.0, 0.0], dtype=torch.float64)  # a tie at the max
    delta = torch.randn(5, 7, generator=g, dtype=torch.float64) * 80
    got = ExpectedLogLossReduction(loss=loss)._risk_one_hot_shift(base, delta)
    logits = base.unsqueeze(2) + delta[..., None, None] * torch.eye(4, dtype=torch.float64)  # (n, R, y, C)
    logp = torch.log_softmax(logits, -1)
    ref = -(logp.exp() * logp).sum(-1) if loss == "log" else 1 - logp.exp().max(-1).values
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=0)

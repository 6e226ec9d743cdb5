"""Sequential (pseudo-batch) selection with Bayesian updates (docs/method.md §5)."""

import pytest
import torch

from bayesal import LastLayerLaplace
from bayesal.exceptions import InvalidInputError
from bayesal.laplace.update import rank1_logit_update
from bayesal.strategies import (
    BADGE,
    BAIT,
    BALD,
    CoreSet,
    EntropySampling,
    LabeledSet,
    LeastConfidence,
    MarginSampling,
    OracleSequential,
    Sequential,
    TypiClust,
    VariationRatio,
)

C, D = 3, 6


@pytest.fixture(scope="module", params=["gaussian", "categorical"])
def setup(request):
    g = torch.Generator().manual_seed(1)
    n = 90
    centers = torch.randn(C, D, generator=g, dtype=torch.float64) * 1.5
    y = torch.arange(n) % C
    x = centers[y] + torch.randn(n, D, generator=g, dtype=torch.float64)
    w = torch.randn(C, D, generator=g, dtype=torch.float64) * 0.5
    b = torch.randn(C, generator=g, dtype=torch.float64) * 0.1
    # the Newton update from the first label: sequential selection simulates it (no exact early phase)
    post = LastLayerLaplace(curvature=request.param, exact_until=0).fit(x[:15], y[:15], weight=w, bias=b)
    return post, LabeledSet(x[:15], y[:15]), x[15:], y[15:]


SCORE_BASES = [
    MarginSampling(),
    EntropySampling(),
    LeastConfidence(),
    EntropySampling(predictive="mc", n_samples=50),
    BALD(n_samples=100),
    VariationRatio(n_samples=100),
]


@pytest.mark.parametrize("base", SCORE_BASES, ids=repr)
@pytest.mark.parametrize("update_with", ["oracle", "most_likely", "sampled", "expected"])
def test_cached_fast_path_equals_reinference(setup, base, update_with):
    post, lab, xc, yc = setup
    if update_with == "oracle":
        fast, slow = OracleSequential(base, fast=True), OracleSequential(base, fast=False)
        rf = fast.query_with_labels(post, xc, lab, 6, torch.Generator().manual_seed(7), yc)
        rs = slow.query_with_labels(post, xc, lab, 6, torch.Generator().manual_seed(7), yc)
    else:
        fast = Sequential(base, update_with=update_with, fast=True)
        slow = Sequential(base, update_with=update_with, fast=False)
        rf = fast.query(post, xc, lab, 6, torch.Generator().manual_seed(7))
        rs = slow.query(post, xc, lab, 6, torch.Generator().manual_seed(7))
    assert rf.indices.tolist() == rs.indices.tolist()
    torch.testing.assert_close(rf.utilities, rs.utilities, atol=1e-8, rtol=0)
    torch.testing.assert_close(fast.last_posterior_.mean_, slow.last_posterior_.mean_, atol=1e-8, rtol=0)
    torch.testing.assert_close(fast.last_posterior_.covariance_, slow.last_posterior_.covariance_, atol=1e-8, rtol=0)


def test_rank1_logit_update_matches_posterior_update(setup):
    post, _, xc, yc = setup
    i = 4
    z, var = post.logits(xc), post.logit_variance(xc)
    p = torch.softmax(z[i], 0)
    m = 1.0 if post.curvature == "gaussian" else float(p.max() * (1 - p.max()))
    target = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    z2, v2 = rank1_logit_update(xc, z, var, post.covariance_ @ xc[i], xc[i], target, p, m, 10.0)
    new = post.update(xc[i : i + 1], target[None], gamma=10.0, steps=1)  # the closed form
    torch.testing.assert_close(z2, new.logits(xc), atol=1e-10, rtol=0)
    torch.testing.assert_close(v2, new.logit_variance(xc), atol=1e-10, rtol=0)


@pytest.mark.parametrize("base", [MarginSampling(), BADGE(), CoreSet(), BAIT(), TypiClust(n_neighbors=3)], ids=repr)
def test_oracle_equals_manual_pick_update_loop(setup, base):
    post, lab, xc, yc = setup
    seq = OracleSequential(base)
    res = seq.query_with_labels(post, xc, lab, 4, torch.Generator().manual_seed(2), yc)

    gen = torch.Generator().manual_seed(2)
    cur, remaining, picks = post, list(range(xc.shape[0])), []
    lx, ly = lab.features, lab.labels
    for _ in range(4):
        j = int(base.query(cur, xc[remaining], LabeledSet(lx, ly), 1, gen).indices[0])
        i = remaining.pop(j)
        picks.append(i)
        cur = cur.update(xc[i : i + 1], yc[i : i + 1])  # the posterior's own update
        lx, ly = torch.cat([lx, xc[i : i + 1]]), torch.cat([ly, yc[i : i + 1]])
    assert res.indices.tolist() == picks
    torch.testing.assert_close(seq.last_posterior_.mean_, cur.mean_, atol=1e-8, rtol=0)


def test_caller_posterior_untouched_and_labels_required(setup):
    post, lab, xc, yc = setup
    before = post.mean_.clone(), post.covariance_.clone()
    Sequential(MarginSampling(), update_with="most_likely").query(post, xc, lab, 3, torch.Generator().manual_seed(0))
    assert torch.equal(post.mean_, before[0]) and torch.equal(post.covariance_, before[1])
    with pytest.raises(InvalidInputError, match="candidate_labels"):
        OracleSequential(MarginSampling()).query_with_labels(post, xc, lab, 3, torch.Generator().manual_seed(0), None)
    with pytest.raises(InvalidInputError, match="OracleSequential"):
        Sequential(MarginSampling(), update_with="oracle")


def test_default_update_is_deployable(setup):
    post, lab, xc, yc = setup
    seq = Sequential(MarginSampling())
    assert seq.update_with == "expected"
    expected = Sequential(MarginSampling(), update_with="expected").query(post, xc, lab, 3, torch.Generator())
    assert seq.query(post, xc, lab, 3, torch.Generator()).indices.tolist() == expected.indices.tolist()


def test_expected_update_is_p_weighted_mean_step(setup):
    post, lab, xc, yc = setup
    post = post.with_update_options(gamma=10.0, steps=1)  # one step is linear in the label
    seq = Sequential(MarginSampling(), update_with="expected")
    res = seq.query(post, xc, lab, 1, torch.Generator().manual_seed(0))
    i = int(res.indices[0])
    p = post.predict_proba(xc[i : i + 1])[0]
    means = torch.stack([post.update(xc[i : i + 1], torch.tensor([c]), gamma=10.0).mean_ for c in range(C)])
    torch.testing.assert_close(seq.last_posterior_.mean_, (p.view(C, 1, 1) * means).sum(0), atol=1e-10, rtol=0)


def test_sequential_margin_spreads_over_duplicates(setup):
    """Top-b margin takes all copies of the most uncertain point; sequential updates move on."""
    post, lab, xc, yc = setup
    x = xc[:10].repeat(3, 1)
    top = MarginSampling().query(post, x, lab, 3, torch.Generator().manual_seed(0))
    assert len(set((top.indices % 10).tolist())) == 1
    seq = Sequential(MarginSampling(), update_with="most_likely")
    res = seq.query(post, x, lab, 3, torch.Generator().manual_seed(0))
    assert len(set((res.indices % 10).tolist())) > 1


def test_full_hessian_falls_back_to_reinference(setup):
    post, lab, xc, yc = setup
    g = torch.Generator().manual_seed(1)
    full = LastLayerLaplace(hessian="full").fit(lab.features, lab.labels, weight=post.mean_, bias=post.bias_)
    res = Sequential(MarginSampling(), update_with="sampled").query(full, xc, lab, 3, g)
    assert len(set(res.indices.tolist())) == 3

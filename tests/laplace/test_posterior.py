"""Fitting, predictive and persistence of the last-layer Laplace posterior (docs/method.md §2–3)."""

import math

import pytest
import torch

from bayesal import HeadConfig, LastLayerLaplace
from bayesal.exceptions import CorruptStateError, InvalidInputError, NotFittedError
from bayesal.laplace.baselines import MCReweighting, finetune_head, first_order_update


def test_fit_trains_head_when_no_weight_given(toy):
    x, y, *_ = toy
    post = LastLayerLaplace(head_config=HeadConfig.paper(epochs=50), random_state=0).fit(x, y)
    acc = (post.predict(x) == y).double().mean()
    assert acc > 0.9
    again = LastLayerLaplace(head_config=HeadConfig.paper(epochs=50), random_state=0).fit(x, y)
    torch.testing.assert_close(post.mean_, again.mean_)  # seeded → reproducible


def test_from_linear(toy):
    x, y, w, b = toy
    lin = torch.nn.Linear(5, 3).double()
    with torch.no_grad():
        lin.weight.copy_(w)
        lin.bias.copy_(b)
    post = LastLayerLaplace.from_linear(lin, x, y)
    torch.testing.assert_close(post.mean_, w)
    torch.testing.assert_close(post.logits(x), lin(x).detach())


def test_mean_field_matches_formula(toy):
    x, y, w, b = toy
    post = LastLayerLaplace(lambda_mf=0.4).fit(x, y, weight=w, bias=b)
    var = torch.einsum("nd,de,ne->n", x, post.covariance_, x)
    expected = torch.softmax((x @ w.T + b) / torch.sqrt(1 + 0.4 * var)[:, None], 1)
    torch.testing.assert_close(post.predict_proba(x), expected)
    torch.testing.assert_close(post.logit_variance(x), var)


@pytest.mark.parametrize("hessian", ["shared", "full"])
def test_mc_converges_to_exact_expectation(toy, hessian):
    """MC predictive converges as K grows; with λ_mf=π/8 it is close to mean-field (probit approx.)."""
    x, y, w, b = toy
    post = LastLayerLaplace(prior_precision=0.5, hessian=hessian).fit(x[:30], y[:30], weight=w, bias=b)
    g = torch.Generator().manual_seed(0)
    ref = post.predict_proba(x[:10], method="mc", n_samples=200_000, generator=g)
    errs = [
        (post.predict_proba(x[:10], method="mc", n_samples=k, generator=g) - ref).abs().max().item()
        for k in (10, 100, 10_000)
    ]
    assert errs[2] < errs[0] and errs[2] < 0.02
    mf = post.predict_proba(x[:10])
    assert (mf - ref).abs().max() < 0.1


def _dense_logit_cov(post, x):
    """Logit covariance ``(N, C, C)`` formed densely from the weight covariance."""
    c, d = post.num_classes_, post.num_features_
    if post.hessian == "shared":
        return torch.einsum("nd,de,ne->n", x, post.covariance_, x)[:, None, None] * torch.eye(c, dtype=x.dtype)
    cov4 = post.covariance_.view(c, d, c, d)
    return torch.einsum("nd,cdke,ne->nck", x, cov4, x)


@pytest.mark.parametrize("hessian", ["shared", "full"])
def test_mc_predictive_matches_independent_sampling(toy, hessian):
    """Large-K MC equals E[softmax(z)] with z drawn independently from N(Wφ + b, S) — tight enough
    that a wrong noise scale fails, in a setup where ignoring the variance is visibly wrong."""
    x, y, w, b = toy
    post = LastLayerLaplace(prior_precision=0.05, hessian=hessian).fit(x[:4], y[:4], weight=w * 3, bias=b)
    xs = x[:6]
    z = xs @ post.mean_.T + post.bias_
    cov = _dense_logit_cov(post, xs) + 1e-12 * torch.eye(3, dtype=torch.float64)
    dist = torch.distributions.MultivariateNormal(z, covariance_matrix=cov)
    torch.manual_seed(1)
    ref = torch.softmax(dist.sample((400_000,)), -1).mean(0)
    assert (torch.softmax(z, -1) - ref).abs().max() > 0.05  # the variance matters here
    mc = post.predict_proba(xs, method="mc", n_samples=400_000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(mc, ref, atol=4e-3, rtol=0)
    samples = post.sample_logits(xs, 100_000, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(samples.mean(0), z, atol=0.05 * float(cov.diagonal(dim1=1, dim2=2).max().sqrt()), rtol=0)


def test_full_ggn_mean_field_matches_formula(toy):
    """Full GGN: softmax(z / sqrt(1 + λ diag(P S P))), P the centering projection."""
    x, y, w, b = toy
    post = LastLayerLaplace(hessian="full", lambda_mf=0.7).fit(x[:20], y[:20], weight=w, bias=b)
    s = _dense_logit_cov(post, x)
    proj = torch.eye(3, dtype=torch.float64) - 1.0 / 3
    var = (proj @ s @ proj).diagonal(dim1=1, dim2=2)
    expected = torch.softmax((x @ w.T + b) / torch.sqrt(1 + 0.7 * var), -1)
    torch.testing.assert_close(post.predict_proba(x), expected)
    torch.testing.assert_close(post.logit_variance(x), s)


def test_mc_predictive_is_seeded_and_independent_of_chunk_size(toy):
    x, y, w, b = toy
    a = LastLayerLaplace(random_state=5).fit(x, y, weight=w, bias=b)
    c = LastLayerLaplace(random_state=5, chunk_size=7).fit(x, y, weight=w, bias=b)
    pa = a.predict_proba(x, method="mc", n_samples=64)
    torch.testing.assert_close(pa, a.predict_proba(x, method="mc", n_samples=64), rtol=0, atol=0)
    torch.testing.assert_close(pa, c.predict_proba(x, method="mc", n_samples=64), rtol=0, atol=1e-12)
    g = LastLayerLaplace(random_state=6).fit(x, y, weight=w, bias=b)
    assert not torch.equal(pa, g.predict_proba(x, method="mc", n_samples=64))


def test_predictive_inputs_are_checked_per_chunk(toy):
    import numpy as np

    x, y, w, b = toy
    post = LastLayerLaplace(chunk_size=8).fit(x, y, weight=w, bias=b)
    x32 = x.float().numpy()
    torch.testing.assert_close(post.predict_proba(x32), post.predict_proba(x.float().double()))
    bad = x32.copy()
    bad[45, 2] = np.nan  # in the sixth chunk: the row number is the pool's, not the chunk's
    with pytest.raises(InvalidInputError, match="row 45"):
        post.predict_proba(bad)
    with pytest.raises(InvalidInputError, match="lambda_mf"):
        post.predict_proba(x, lambda_mf=-5)
    with pytest.raises(InvalidInputError, match="columns"):
        post.logits(x[:, :2])


def test_label_types_and_class_count():
    import numpy as np

    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 4, generator=g, dtype=torch.float64)
    w = torch.zeros(3, 4, dtype=torch.float64)
    post = LastLayerLaplace().fit(x, np.array([0, 1, 2] * 4, dtype=np.uint32), weight=w)
    assert post.num_classes_ == 3
    soft = torch.full((12, 4), 0.25, dtype=torch.float64)
    assert LastLayerLaplace(head_config=HeadConfig.paper(epochs=1)).fit(x, soft).num_classes_ == 4
    post.update(x[:2], np.array([2, 0], dtype=np.uint64))
    assert post.update([], []).mean_ is post.mean_  # an empty update changes nothing
    with pytest.raises(InvalidInputError, match="integer class indices"):
        post.update(x[:1], ["cat"])


def test_chunked_predictive_equals_unchunked(toy):
    x, y, w, b = toy
    big = LastLayerLaplace().fit(x, y, weight=w, bias=b)
    small = LastLayerLaplace(chunk_size=7).fit(x, y, weight=w, bias=b)
    torch.testing.assert_close(big.predict_proba(x), small.predict_proba(x))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert big.predict_proba(x, method="mc", n_samples=50, generator=g1).shape == (60, 3)
    assert small.predict_proba(x, method="mc", n_samples=50, generator=g2).shape == (60, 3)


def test_large_pool_float32_features_scores_in_chunks():
    d, c = 384, 10
    g = torch.Generator().manual_seed(0)
    post = LastLayerLaplace(chunk_size=4096).fit(
        torch.randn(50, d, generator=g), torch.arange(50) % c, weight=torch.randn(c, d, generator=g) * 0.01
    )
    pool = torch.randn(20_000, d, generator=g)  # float32 pool, converted per chunk
    probs = post.predict_proba(pool)
    assert probs.shape == (20_000, c) and probs.dtype == torch.float64
    torch.testing.assert_close(probs.sum(1), torch.ones(20_000, dtype=torch.float64))


def test_categorical_curvature_uses_pmax(toy):
    x, y, w, b = toy
    post = LastLayerLaplace(curvature="categorical").fit(x, y, weight=w, bias=b)
    p = torch.softmax(x @ w.T + b, 1).max(1).values
    prec = torch.eye(5, dtype=torch.float64) + (x * (p * (1 - p))[:, None]).T @ x
    torch.testing.assert_close(post.covariance_, torch.linalg.inv(prec), atol=1e-10, rtol=0)


def test_state_dict_roundtrip(toy, tmp_path):
    x, y, w, b = toy
    post = LastLayerLaplace(hessian="full", lambda_mf=1.0).fit(x, y, weight=w, bias=b).update(x[:3], y[:3])
    torch.save(post.state_dict(), tmp_path / "p.pt")
    back = LastLayerLaplace.from_state_dict(torch.load(tmp_path / "p.pt"))
    torch.testing.assert_close(back.predict_proba(x), post.predict_proba(x))
    assert back.n_updates_ == 3
    with pytest.raises(CorruptStateError, match="malformed"):
        LastLayerLaplace.from_state_dict({"config": {}})


def test_sample_weights_have_posterior_moments(toy):
    x, y, w, b = toy
    post = LastLayerLaplace(prior_precision=1.0).fit(x[:5], y[:5], weight=w, bias=b)
    s = post.sample_weights(40_000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(s.mean(0), w, atol=0.03, rtol=0)
    emp = torch.cov(s[:, 0, :].T)
    torch.testing.assert_close(emp, post.covariance_, atol=0.03, rtol=0)


def test_bad_construction_and_input(toy):
    x, y, w, b = toy
    with pytest.raises(InvalidInputError, match="prior_precision"):
        LastLayerLaplace(prior_precision=0)
    with pytest.raises(InvalidInputError, match="curvature"):
        LastLayerLaplace(curvature="laplace")
    with pytest.raises(NotFittedError, match="not fitted"):
        LastLayerLaplace().predict_proba(x)
    with pytest.raises(InvalidInputError, match="shape"):
        LastLayerLaplace().fit(x, y, weight=w[:, :2])
    with pytest.raises(InvalidInputError, match="at least 2 classes"):
        LastLayerLaplace().fit(x, torch.zeros(60, dtype=torch.long))
    bad = x.clone()
    bad[4, 1] = math.inf
    with pytest.raises(InvalidInputError, match="row 4"):
        LastLayerLaplace().fit(bad, y, weight=w)


def test_baselines_move_towards_labels(toy):
    x, y, w, b = toy
    post = LastLayerLaplace().fit(x[:30], y[:30], weight=w, bias=b)
    xn, yn = x[30:], y[30:]

    def nll(probs):
        return -torch.log(probs[torch.arange(len(yn)), yn]).mean()

    base = nll(post.predict_proba(xn))
    assert nll(first_order_update(post, xn, yn, gamma=1e-2).predict_proba(xn)) < base
    assert nll(post.update(xn, yn, gamma=1.0).predict_proba(xn)) < base
    mc = MCReweighting(post, n_samples=500, gamma=1e-1, generator=torch.Generator().manual_seed(0))
    before = nll(mc.predict_proba(xn))
    mc.update(xn, yn)
    assert nll(mc.predict_proba(xn)) < before
    assert torch.isclose(mc.weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    wf, bf = finetune_head(post, xn, yn, epochs=5, generator=torch.Generator().manual_seed(0))
    assert nll(torch.softmax(xn @ wf.T + bf, 1)) < nll(torch.softmax(xn @ w.T + b, 1))


def test_mc_reweighting_weights_follow_the_spec(toy):
    """weights ∝ exp(γ_mc Σ_j log p(y_j | x_j, W_k)), computed here sample by sample."""
    x, y, w, b = toy
    post = LastLayerLaplace().fit(x[:30], y[:30], weight=w, bias=b)
    mc = MCReweighting(post, n_samples=50, gamma=0.3, generator=torch.Generator().manual_seed(0))
    mc.update(x[30:35], y[30:35]).update(x[35:38], y[35:38])
    logw = torch.stack([
        torch.log_softmax(x[30:38] @ wk.T + b, 1)[torch.arange(8), y[30:38]].sum() for wk in mc.samples
    ])
    torch.testing.assert_close(mc.weights, torch.softmax(0.3 * logw, 0))
    probs = torch.stack([torch.softmax(x[:5] @ wk.T + b, 1) for wk in mc.samples])
    torch.testing.assert_close(mc.predict_proba(x[:5]), torch.einsum("k,knc->nc", mc.weights, probs))


def test_first_order_and_finetune_follow_the_spec(toy):
    x, y, w, b = toy
    post = LastLayerLaplace().fit(x[:30], y[:30], weight=w, bias=b)
    p = torch.softmax(x[30:33] @ w.T + b, 1)
    onehot = torch.nn.functional.one_hot(y[30:33], 3).double()
    fo = first_order_update(post, x[30:33], y[30:33], gamma=1e-3)
    torch.testing.assert_close(fo.mean_, w + 1e-3 * (onehot - p).T @ x[30:33])
    torch.testing.assert_close(fo.covariance_, post.covariance_)
    w0, b0 = finetune_head(post, x[30:], y[30:], epochs=0)  # no steps: exactly the current head
    torch.testing.assert_close(w0, w) and torch.testing.assert_close(b0, b)


def test_head_training_uses_the_spec_recipe(toy):
    """200 epochs, RAdam(lr 1e-2, wd 1e-4), cosine schedule, batch 64, from zeros: train_head equals
    that recipe written out step by step."""
    from bayesal.laplace.head import train_head

    cfg = HeadConfig.paper()
    assert (cfg.solver, cfg.epochs, cfg.lr, cfg.weight_decay, cfg.batch_size) == ("radam", 200, 1e-2, 1e-4, 64)
    x, y, *_ = toy
    small = HeadConfig.paper(epochs=3, batch_size=16)
    wt, bt = train_head(x, y, 3, config=small, generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    wr = torch.zeros(3, 5, dtype=torch.float64, requires_grad=True)
    br = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.RAdam([wr, br], lr=1e-2, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=3 * 4)
    for _ in range(3):
        order = torch.randperm(60, generator=g)
        for k in range(0, 60, 16):
            i = order[k : k + 16]
            loss = torch.nn.functional.cross_entropy(x[i] @ wr.T + br, y[i])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    torch.testing.assert_close(wt, wr.detach())
    torch.testing.assert_close(bt, br.detach())

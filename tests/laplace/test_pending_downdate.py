"""The shared covariance's Woodbury downdate is applied when Σ' is first read: every reader sees the same Σ'."""

import threading

import pytest
import torch

from bayesal import LastLayerLaplace

D = 40  # the pending factor may hold up to D/4 = 10 rows: three 3-point updates stay pending, a fourth does not


def _data(seed=0, n=60, c=3):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, D, generator=g, dtype=torch.float64)
    y = torch.arange(n) % c
    return centers[y] + torch.randn(n, D, generator=g, dtype=torch.float64), y


def _chain(post, x, y, method, start=20, batches=4, size=3):
    for k in range(batches):
        sl = slice(start + k * size, start + (k + 1) * size)
        post = post.update(x[sl], y[sl], method=method)
    return post


@pytest.mark.parametrize("batches", [1, 3, 4, 7])
def test_a_chain_of_updates_equals_the_eager_downdates(batches):
    x, y = _data()
    post = LastLayerLaplace(prior_precision=0.5).fit(x[:20], y[:20])
    lazy = _chain(post, x, y, "woodbury", batches=batches)
    eager = _chain(post, x, y, "rank1", batches=batches)  # downdates Σ at every update
    torch.testing.assert_close(lazy.mean, eager.mean, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(lazy.covariance, eager.covariance, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(lazy.covariance, lazy.covariance.T, rtol=0, atol=1e-15)


def test_the_downdate_is_the_inverse_of_the_accumulated_precision():
    x, y = _data(seed=1)
    post = LastLayerLaplace(prior_precision=0.5, steps=1, curvature="gaussian").fit(x[:20], y[:20])
    prec = torch.linalg.inv(post.covariance)
    new = post.update(x[20:26], y[20:26])
    want = torch.linalg.inv(prec + x[20:26].T @ x[20:26])  # gaussian curvature: m = 1 per point
    torch.testing.assert_close(new.covariance, want, rtol=1e-8, atol=1e-10)


def test_copies_and_saved_states_see_the_same_covariance():
    x, y = _data(seed=2)
    post = LastLayerLaplace(prior_precision=0.5).fit(x[:20], y[:20])
    lazy = _chain(post, x, y, "woodbury", batches=2)
    want = _chain(post, x, y, "rank1", batches=2).covariance
    shallow = lazy.with_update_options(steps=2)  # shares the pending state
    deep = lazy.copy()
    torch.testing.assert_close(deep.covariance, want, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(shallow.covariance, want, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(lazy.covariance, want, rtol=1e-9, atol=1e-11)
    restored = LastLayerLaplace.from_state_dict(_chain(post, x, y, "woodbury", batches=2).state_dict())
    torch.testing.assert_close(restored.covariance, want, rtol=1e-9, atol=1e-11)
    # the source is untouched by its updates (they replace state, never mutate it)
    torch.testing.assert_close(post.covariance, LastLayerLaplace(prior_precision=0.5).fit(x[:20], y[:20]).covariance)


def test_predictions_after_a_pending_update_use_the_downdated_covariance():
    x, y = _data(seed=3)
    post = LastLayerLaplace(prior_precision=0.5).fit(x[:20], y[:20])
    lazy, eager = post.update(x[20:26], y[20:26]), post.update(x[20:26], y[20:26], method="rank1")
    torch.testing.assert_close(lazy.logit_variance(x[40:]), eager.logit_variance(x[40:]), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(lazy.predict_proba(x[40:]), eager.predict_proba(x[40:]), rtol=1e-9, atol=1e-12)


def test_concurrent_first_reads_agree():
    x, y = _data(seed=4)
    lazy = _chain(LastLayerLaplace(prior_precision=0.5).fit(x[:20], y[:20]), x, y, "woodbury", batches=3)
    seen = []
    barrier = threading.Barrier(4)

    def read():
        barrier.wait()
        seen.append(lazy.covariance.clone())

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 4 and all(torch.equal(s, seen[0]) for s in seen)

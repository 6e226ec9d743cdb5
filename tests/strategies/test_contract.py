"""The contract every registered strategy keeps, run as one template over the whole registry.

A strategy is built from its spec by the registry; oracle strategies (``query_with_labels``) get the
candidates' true labels, deployable ones (``query``) never see them. Every strategy must return
``batch_size`` distinct long indices into the candidates with finite utilities, reproducibly for a
seeded generator, for float32 and float64 pools, and refuse an empty pool or an oversized batch.
"""

import numpy as np
import pytest
import torch

from bayesal import LastLayerLaplace
from bayesal.exceptions import InvalidInputError, StrategyError
from bayesal.strategies import (
    BASE_STRATEGY_NAMES,
    ORACLE_STRATEGY_NAMES,
    STRATEGY_NAMES,
    CoreSet,
    LabeledSet,
    MarginSampling,
    OracleLookahead,
    OracleSequential,
    OracleStrategy,
    QueryResult,
    QueryStrategy,
    Sequential,
    is_oracle,
    make_strategy,
    select,
    subsample_candidates,
)

C, D = 4, 8
#: Every registered name plus the spec forms the CLI and sessions use.
SPECS = STRATEGY_NAMES + ("seq-margin", "seq-badge@most-likely", "seq-bald@sampled", "seq-entropy@expected",
                          "lookahead", "oracle-lookahead", "least-confidence", "lc", "core-set")
#: Cheap options so the template stays fast.
OPTIONS = {"bald": {"n_samples": 200}, "variation_ratio": {"n_samples": 200},
           "oracle_lookahead": {"n_batches": 12}, "oracle-lookahead": {"n_batches": 12},
           "expected_log_loss_reduction": {"n_reference": 30}, "lookahead": {"n_reference": 30},
           "seq-bald@sampled": {"base_kwargs": {"n_samples": 100}}}


@pytest.fixture(scope="module")
def problem():
    g = torch.Generator().manual_seed(0)
    n = 160
    centers = torch.randn(C, D, generator=g, dtype=torch.float64) * 1.5
    y = torch.arange(n) % C
    x = centers[y] + torch.randn(n, D, generator=g, dtype=torch.float64)
    w = torch.randn(C, D, generator=g, dtype=torch.float64) * 0.5
    b = torch.randn(C, generator=g, dtype=torch.float64) * 0.1
    post = LastLayerLaplace().fit(x[:20], y[:20], weight=w, bias=b)
    return post, LabeledSet(x[:20], y[:20]), x[20:100], y[20:100], (x[100:], y[100:])


def build(spec, held_out):
    return make_strategy(spec, held_out=held_out, **OPTIONS.get(spec, {}))


def run(strategy, post, x, lab, b, seed, y):
    gen = torch.Generator().manual_seed(seed)
    if isinstance(strategy, OracleStrategy):
        return strategy.query_with_labels(post, x, lab, b, gen, y)
    return strategy.query(post, x, lab, b, gen)


def check_result(res: QueryResult, b: int, n: int) -> None:
    assert isinstance(res, QueryResult)
    assert res.indices.shape == (b,) and res.indices.dtype == torch.long
    assert res.utilities.shape == (b,) and res.utilities.is_floating_point()
    assert not torch.isnan(res.utilities).any()
    assert len(set(res.indices.tolist())) == b
    assert int(res.indices.min()) >= 0 and int(res.indices.max()) < n


@pytest.mark.parametrize("spec", SPECS)
def test_kind_is_declared(problem, spec):
    strategy = build(spec, problem[4])
    oracle = spec in ORACLE_STRATEGY_NAMES or spec.startswith("oracle") or spec == "seq-margin"
    assert is_oracle(strategy) == oracle
    assert isinstance(strategy, OracleStrategy if oracle else QueryStrategy)
    # one entry point per kind: deployable strategies never take labels, oracle ones always do
    assert hasattr(strategy, "query_with_labels") == oracle and hasattr(strategy, "query") != oracle


@pytest.mark.parametrize("spec", SPECS)
def test_result_contract_and_reproducible(problem, spec):
    post, lab, xc, yc, held_out = problem
    strategy = build(spec, held_out)
    res = run(strategy, post, xc, lab, 7, 3, yc)
    check_result(res, 7, xc.shape[0])
    again = run(build(spec, held_out), post, xc, lab, 7, 3, yc)
    assert torch.equal(res.indices, again.indices)
    torch.testing.assert_close(res.utilities, again.utilities, rtol=0, atol=0)


@pytest.mark.parametrize("spec", SPECS)
def test_empty_labeled_set(problem, spec):
    post, _, xc, yc, held_out = problem
    empty = LabeledSet(torch.zeros(0, D, dtype=torch.float64), torch.zeros(0, dtype=torch.long))
    check_result(run(build(spec, held_out), post, xc, empty, 5, 0, yc), 5, xc.shape[0])


@pytest.mark.parametrize("spec", SPECS)
def test_float32_and_float64_pools(problem, spec):
    """A float32 (torch or NumPy) pool is read as its float64 values: the same picks."""
    post, lab, xc, yc, held_out = problem
    x32 = xc.float()
    ref = run(build(spec, held_out), post, x32.double(), lab, 4, 1, yc)
    for pool in (x32, x32.numpy(), x32.double().numpy()):
        res = run(build(spec, held_out), post, pool, lab, 4, 1, yc)
        check_result(res, 4, xc.shape[0])
        assert res.indices.tolist() == ref.indices.tolist()
    # a float32 posterior works too
    post32 = LastLayerLaplace(dtype=torch.float32).fit(lab.features, lab.labels, weight=post.mean_, bias=post.bias_)
    check_result(run(build(spec, held_out), post32, x32, lab, 4, 1, yc), 4, xc.shape[0])


@pytest.mark.parametrize("spec", SPECS)
def test_bad_batches_and_pools_raise(problem, spec):
    post, lab, xc, yc, held_out = problem
    strategy = build(spec, held_out)
    with pytest.raises(InvalidInputError, match="exceeds the number of candidates"):
        run(strategy, post, xc[:5], lab, 6, 0, yc[:5])
    for bad in (0, -1):
        with pytest.raises(InvalidInputError, match="batch_size must be >= 1"):
            run(strategy, post, xc, lab, bad, 0, yc)
    with pytest.raises(InvalidInputError, match="no candidates"):
        run(strategy, post, xc[:0], lab, 1, 0, yc[:0])
    nan = xc.clone()
    nan[3, 2] = float("nan")
    with pytest.raises(InvalidInputError, match="NaN"):
        run(strategy, post, nan, lab, 2, 0, yc)


@pytest.mark.parametrize("spec", BASE_STRATEGY_NAMES)
def test_batch_as_large_as_the_pool(problem, spec):
    post, lab, xc, yc, held_out = problem
    res = run(build(spec, held_out), post, xc[:6], lab, 6, 0, yc[:6])
    assert sorted(res.indices.tolist()) == list(range(6))


@pytest.mark.parametrize("spec", SPECS)
def test_selection_respects_the_labeled_set(problem, spec):
    """The shared selection step only ever returns available pool instances."""
    post, lab, xc, yc, held_out = problem
    pool, labels = torch.cat([lab.features, xc]), torch.cat([lab.labels, yc])
    available = torch.ones(pool.shape[0], dtype=torch.bool)
    available[:20] = False  # the labeled set
    available[40:50] = False  # e.g. skipped
    picks = select(build(spec, held_out), post, pool, available, lab, 5, torch.Generator().manual_seed(2),
                   candidate_size=30, pool_labels=labels)
    assert picks.shape == (5,) and picks.dtype == torch.long and len(set(picks.tolist())) == 5
    assert bool(available[picks].all())
    again = select(build(spec, held_out), post, pool, available, lab, 5, torch.Generator().manual_seed(2),
                   candidate_size=30, pool_labels=labels)
    assert picks.tolist() == again.tolist()


def test_registry_grammar():
    assert isinstance(make_strategy("margin"), MarginSampling)
    assert isinstance(make_strategy("Core-Set"), CoreSet)
    seq = make_strategy("seq-least-confidence@most-likely")
    assert isinstance(seq, Sequential) and seq.update_with == "most_likely" and seq.base.name == "least_confidence"
    assert isinstance(make_strategy("seq-margin"), OracleSequential)  # the paper's simulation
    assert isinstance(make_strategy("seq-margin@oracle"), OracleSequential)
    deployable = make_strategy("sequential", base="badge")
    assert isinstance(deployable, Sequential) and deployable.update_with == "expected"
    assert isinstance(make_strategy("sequential", update_with="oracle"), OracleSequential)
    assert isinstance(make_strategy("seq-bald@sampled", base_kwargs={"n_samples": 7}).base, type(make_strategy("bald")))
    assert make_strategy("seq-bald@sampled", base_kwargs={"n_samples": 7}).base.n_samples == 7
    obj = MarginSampling()
    assert make_strategy(obj) is obj
    for bad in ("nope", "seq-nope", "seq-margin@guess"):
        with pytest.raises(InvalidInputError, match="unknown"):
            make_strategy(bad)
    with pytest.raises(InvalidInputError, match="held-out reference set"):
        make_strategy("oracle-lookahead")
    ref = (torch.zeros(3, D), torch.zeros(3, dtype=torch.long))
    assert isinstance(make_strategy("oracle-lookahead", held_out=ref), OracleLookahead)


def test_oracle_selection_needs_labels(problem):
    post, lab, xc, yc, held_out = problem
    available = torch.ones(xc.shape[0], dtype=torch.bool)
    with pytest.raises(InvalidInputError, match="true labels"):
        select(make_strategy("seq-margin"), post, xc, available, lab, 2, torch.Generator())


def test_subsample_candidates_is_paired_and_bounded():
    available = torch.ones(50, dtype=torch.bool)
    available[::3] = False
    everything = subsample_candidates(available, None, torch.Generator())
    assert everything.tolist() == available.nonzero().flatten().tolist()
    assert subsample_candidates(available, 1000, torch.Generator()).tolist() == everything.tolist()
    a = subsample_candidates(available, 10, torch.Generator().manual_seed(4))
    assert len(set(a.tolist())) == 10 and bool(available[a].all())
    # one more instance labeled: the same permutation, so all other candidates stay
    fewer = available.clone()
    fewer[int(a[0])] = False
    b = subsample_candidates(fewer, 10, torch.Generator().manual_seed(4))
    assert a[1:].tolist() == b[:9].tolist()


def test_invalid_strategy_output_is_reported(problem):
    post, lab, xc, yc, _ = problem

    class Twice(QueryStrategy):
        def query(self, posterior, candidates, labeled, batch_size, generator):
            return QueryResult(torch.zeros(batch_size, dtype=torch.long), torch.zeros(batch_size))

    with pytest.raises(StrategyError, match="invalid indices"):
        select(Twice(), post, xc, torch.ones(xc.shape[0], dtype=torch.bool), lab, 3, torch.Generator())


def test_numpy_float64_labels_accepted_by_oracles(problem):
    post, lab, xc, yc, held_out = problem
    res = make_strategy("seq-margin").query_with_labels(post, xc, lab, 3, torch.Generator(), np.asarray(yc))
    check_result(res, 3, xc.shape[0])

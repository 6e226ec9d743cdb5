"""How a Session builds and runs its strategy: the registry's specs, deployable only, with the posterior's γ."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bayesal.exceptions import InvalidInputError
from bayesal.labeling.session import Session
from bayesal.laplace import HeadConfig, PosteriorOptions
from bayesal.strategies import LabeledSet, MarginSampling, OracleSequential, Sequential


@pytest.fixture
def pool(clustered_pool):
    x, y, _, _ = clustered_pool(n=120, d=5, spread=1.5, dtype=np.float64)
    return x, y


def _expected_picks(s: Session, x: np.ndarray, k: int, gamma: float) -> list[int]:
    """Sequential most-likely margin picks over all available instances (deterministic: no draws)."""
    avail = s.available_indices()
    lab = sorted(s.labels)
    labeled = LabeledSet(torch.as_tensor(x[lab]), torch.tensor([s.labels[i] for i in lab]))
    post = s.posterior.with_update_options(gamma=gamma)
    res = Sequential(MarginSampling(), update_with="most_likely").query(
        post, torch.as_tensor(x[avail]), labeled, k, torch.Generator().manual_seed(0))
    return [int(avail[i]) for i in res.indices]


def test_sequential_session_selects_with_the_session_gamma(pool):
    x, y = pool
    s = Session(x, 3, strategy="sequential", strategy_kwargs={"update_with": "most_likely"},
                candidate_size=None, random_state=0, options=PosteriorOptions(gamma=1.0, head=HeadConfig(epochs=5)))
    for i in range(9):
        s.tell(i, int(y[i]))
    assert not s.cold_start and s.posterior.gamma == 1.0
    picks = s.query(6)
    assert picks == _expected_picks(s, x, 6, gamma=1.0)
    assert picks != _expected_picks(s, x, 6, gamma=10.0)  # the test can tell the two step sizes apart


def test_sequential_session_defaults_to_a_deployable_mode(pool):
    """'sequential' alone used to mean oracle labels and failed at the first query after the cold start."""
    x, y = pool
    s = Session(x, 3, strategy="sequential", candidate_size=None, random_state=1, options=PosteriorOptions(head=HeadConfig(epochs=5)))
    for i in range(6):
        s.tell(i, int(y[i]))
    assert not s.cold_start
    picks = s.query(3)
    assert len(set(picks)) == 3 and not set(picks) & set(s.labels)
    # the default is the soft-label ('expected') update, the same picks as naming it
    t = Session(x, 3, strategy="seq-margin@expected", candidate_size=None, random_state=1,
                options=PosteriorOptions(head=HeadConfig(epochs=5)))
    for i in range(6):
        t.tell(i, int(y[i]))
    assert t.query(3) == picks


@pytest.mark.parametrize("strategy", ["seq-margin", "seq-badge@oracle", "oracle-lookahead", "oracle_sequential"])
def test_oracle_strategies_are_refused_at_construction(strategy, pool):
    x, _ = pool
    with pytest.raises(InvalidInputError, match="true labels"):
        Session(x, 3, strategy=strategy)


def test_oracle_strategy_object_is_refused(pool):
    x, _ = pool
    with pytest.raises(InvalidInputError, match="true labels"):
        Session(x, 3, strategy=OracleSequential(MarginSampling()))


def test_every_spec_of_the_registry_is_understood(pool):
    x, y = pool
    for spec in ("random", "margin", "least-confidence", "seq-entropy@most_likely", "lookahead"):
        s = Session(x, 3, strategy=spec, candidate_size=40, random_state=2, options=PosteriorOptions(head=HeadConfig(epochs=5)))
        for i in range(6):
            s.tell(i, int(y[i]))
        picks = s.query(2)
        assert len(set(picks)) == 2 and not set(picks) & set(s.labels), spec

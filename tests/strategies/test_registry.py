"""Strategies register themselves with a decorator; the spec grammar and the per-task score list come
from the registry."""

import pytest
import torch

from bayesal.exceptions import InvalidInputError
from bayesal.strategies import (
    BASE_STRATEGY_NAMES,
    SPEC_HELP,
    MarginSampling,
    OracleSequential,
    PredictiveScoreStrategy,
    QueryStrategy,
    RandomSampling,
    Sequential,
    base_strategy_names,
    make_strategy,
    register_strategy,
    registered_strategies,
    registration,
    score_strategy_names,
)


@pytest.fixture
def scratch_registry(monkeypatch):
    """The registry as shipped, restored after the test."""
    monkeypatch.setattr(registration, "_REGISTRY", dict(registration._REGISTRY))
    monkeypatch.setattr(registration, "_ALIASES", dict(registration._ALIASES))


def test_shipped_strategies_register_themselves():
    entries = registered_strategies()
    assert set(entries) == set(BASE_STRATEGY_NAMES) == {
        "random", "entropy", "margin", "least_confidence", "bald", "variation_ratio", "badge", "coreset",
        "typiclust", "bait"}
    for name, entry in entries.items():
        assert entry.factory.name == name  # each class is registered under its own name
        assert isinstance(make_strategy(name), entry.factory)
    assert isinstance(make_strategy("LC"), type(make_strategy("least-confidence")))
    assert isinstance(make_strategy("core-set"), entries["coreset"].factory)
    assert SPEC_HELP.startswith("random, entropy, margin, least-confidence, bald, variation-ratio, badge, coreset, "
                                "typiclust, bait, seq-NAME[@")


def test_score_strategies_come_from_the_registry():
    assert score_strategy_names() == ("entropy", "margin", "least_confidence", "bald", "variation_ratio",
                                      "seq-margin", "seq-least_confidence")


def test_unknown_specs_keep_their_message():
    for spec in ("frobnicate", "seq-frobnicate", "seq-lookahead"):
        with pytest.raises(InvalidInputError, match=f"unknown strategy '{spec}'; choose one of: random, entropy"):
            make_strategy(spec)


def test_a_new_strategy_is_one_decorated_class(scratch_registry):
    @register_strategy("smallest-margin", aliases=("sm",), sequential_score=True)
    class SmallestMargin(MarginSampling):
        name = "smallest_margin"

    assert isinstance(make_strategy("smallest-margin"), SmallestMargin)
    assert isinstance(make_strategy("SM"), SmallestMargin)
    seq = make_strategy("seq-smallest_margin@expected")
    assert isinstance(seq, Sequential) and isinstance(seq.base, SmallestMargin)
    assert isinstance(make_strategy("seq-sm"), OracleSequential)
    assert isinstance(make_strategy("sequential", base="sm").base, SmallestMargin)
    assert base_strategy_names()[-1] == "smallest_margin"
    assert score_strategy_names()[-1] == "seq-smallest_margin" and "smallest_margin" in score_strategy_names()
    with pytest.raises(InvalidInputError, match="smallest-margin"):
        make_strategy("frobnicate")  # the help lists it too
    # it selects like any strategy
    post_x = torch.randn(30, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    from bayesal.laplace import LastLayerLaplace
    from bayesal.strategies import LabeledSet

    post = LastLayerLaplace(prior_precision=1.0).fit(post_x[:10], torch.arange(10) % 3)
    res = make_strategy("sm").query(post, post_x[10:], LabeledSet(post_x[:10], torch.arange(10) % 3), 3,
                                    torch.Generator().manual_seed(0))
    ref = MarginSampling().query(post, post_x[10:], LabeledSet(post_x[:10], torch.arange(10) % 3), 3,
                                 torch.Generator().manual_seed(0))
    assert torch.equal(res.indices, ref.indices)


def test_registration_is_checked(scratch_registry):
    class Other(RandomSampling):
        name = "other"

    with pytest.raises(InvalidInputError, match="already registered"):
        register_strategy("margin")(Other)
    with pytest.raises(InvalidInputError, match="already registered"):
        register_strategy("other", aliases=("lc",))(Other)
    with pytest.raises(InvalidInputError, match="cannot be registered"):
        register_strategy("seq-other")(Other)
    with pytest.raises(InvalidInputError, match="cannot be registered"):
        register_strategy("other@x")(Other)
    with pytest.raises(InvalidInputError, match="only QueryStrategy classes"):
        register_strategy("plain")(object)
    with pytest.raises(InvalidInputError, match="sequential_score needs a ScoreStrategy"):
        register_strategy("other", sequential_score=True)(Other)
    assert "other" not in registered_strategies()
    register_strategy("margin")(MarginSampling)  # the same class again is no conflict
    assert issubclass(registered_strategies()["margin"].factory, PredictiveScoreStrategy)
    assert registered_strategies()["random"].per_task_score is False
    assert issubclass(registered_strategies()["random"].factory, QueryStrategy)

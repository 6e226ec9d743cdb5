"""PosteriorOptions: one validated, frozen value that builds the posterior and saves as plain data."""

import dataclasses
import json

import pytest
import torch

from bayesal.exceptions import InvalidInputError
from bayesal.laplace import (
    FIDELITY_OPTIONS,
    PAPER_OPTIONS,
    HeadConfig,
    HeadSolver,
    LastLayerLaplace,
    PosteriorOptions,
    PriorSelection,
)
from bayesal.laplace.options import Curvature, Hessian


def test_defaults_are_the_posteriors():
    options, post = PosteriorOptions(), LastLayerLaplace()
    built = options.posterior()
    for key in ("prior_precision", "curvature", "hessian", "gamma", "steps", "lambda_mf", "dtype"):
        assert getattr(built, key) == getattr(post, key)
    assert {k: options.to_dict()[k] for k in FIDELITY_OPTIONS} == FIDELITY_OPTIONS
    assert built.head_config == HeadConfig() == options.head


def test_paper_options():
    paper = PosteriorOptions.paper()
    assert {k: paper.to_dict()[k] for k in PAPER_OPTIONS} == PAPER_OPTIONS
    assert paper.head == HeadConfig.paper() and paper.prior_precision == 1.0
    assert PosteriorOptions.paper(gamma=3.0).gamma == 3.0


def test_values_are_normalised():
    options = PosteriorOptions(prior_precision=2, curvature="gaussian", hessian="full", gamma=3, lambda_mf=1)
    assert options == PosteriorOptions(prior_precision=2.0, curvature=Curvature.GAUSSIAN, hessian=Hessian.FULL,
                                       gamma=3.0, lambda_mf=1.0)
    assert options.curvature is Curvature.GAUSSIAN and options.hessian is Hessian.FULL
    assert type(options.prior_precision) is float and type(options.gamma) is float
    assert PosteriorOptions(prior_precision="evidence").prior_precision is PriorSelection.EVIDENCE
    assert PosteriorOptions().chooses_prior and not options.chooses_prior
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.gamma = 2.0  # type: ignore[misc]


@pytest.mark.parametrize("bad, match", [
    ({"prior_precision": "cvx"}, "prior_precision must be a number"),
    ({"prior_precision": -1.0}, "prior_precision"),
    ({"prior_precision": True}, "prior_precision"),
    ({"gamma": -1.0}, "gamma"),
    ({"gamma": "1"}, "gamma"),
    ({"steps": 0}, "steps"),
    ({"steps": 1.5}, "steps"),
    ({"lambda_mf": -0.1}, "lambda_mf"),
    ({"curvature": "flat"}, "unknown curvature"),
    ({"hessian": "diag"}, "unknown hessian"),
    ({"head": {"epochs": 3}}, "head must be a HeadConfig"),
])
def test_bad_values_are_refused(bad, match):
    with pytest.raises(InvalidInputError, match=match):
        PosteriorOptions(**bad)
    with pytest.raises(InvalidInputError, match=match.split()[-1]):
        PosteriorOptions().replace(**bad)


def test_to_dict_is_plain_json_and_round_trips():
    for options in (PosteriorOptions(), PosteriorOptions.paper(), PosteriorOptions(prior_precision="cv-predictive",
                                                                                   hessian="full", steps=2)):
        data = options.to_dict()
        assert json.loads(json.dumps(data)) == data
        assert all(type(v) in (int, float, str) for k, v in data.items() if k != "head")
        assert all(type(v) in (int, float, str) for v in data["head"].values())
        assert PosteriorOptions.from_dict(data) == options
        assert PosteriorOptions.from_dict(json.loads(json.dumps(data))) == options
    assert PosteriorOptions.from_dict({}) == PosteriorOptions()
    assert PosteriorOptions.from_dict({"head": HeadConfig.paper()}).head == HeadConfig.paper()
    with pytest.raises(InvalidInputError, match="unknown posterior option"):
        PosteriorOptions.from_dict({"prior": 1.0})
    with pytest.raises(InvalidInputError, match="unknown head option"):
        PosteriorOptions.from_dict({"head": {"epoch": 1}})
    with pytest.raises(InvalidInputError, match="mapping"):
        PosteriorOptions.from_dict([("gamma", 1.0)])  # type: ignore[arg-type]


def test_posterior_builds_the_same_posterior_as_the_keywords(toy):
    x, y, *_ = toy
    options = PosteriorOptions(prior_precision=0.5, curvature="gaussian", gamma=2.0, steps=3, lambda_mf=0.3,
                               head=HeadConfig(tol=1e-8))
    post = options.posterior(random_state=0).fit(x, y)
    ref = LastLayerLaplace(prior_precision=0.5, curvature="gaussian", gamma=2.0, steps=3, lambda_mf=0.3,
                           head_config=HeadConfig(tol=1e-8), random_state=0).fit(x, y)
    torch.testing.assert_close(post.mean_, ref.mean_)
    torch.testing.assert_close(post.covariance_, ref.covariance_)
    assert (post.gamma, post.steps, post.lambda_mf, post.curvature) == (2.0, 3, 0.3, Curvature.GAUSSIAN)
    low = options.posterior(dtype=torch.float32, chunk_size=7)
    assert low.dtype == torch.float32 and low.chunk_size == 7
    # a posterior keeps a chosen prior as a plain string: its state_dict loads with weights_only
    state = PosteriorOptions(prior_precision="evidence").posterior().fit(x, y).state_dict()
    assert type(state["config"]["prior_precision"]) is str


def test_enum_options_accept_plain_strings():
    assert HeadConfig(solver="radam") == HeadConfig(solver=HeadSolver.RADAM) == HeadConfig.paper()
    assert type(HeadConfig(solver=HeadSolver.RADAM).solver) is str  # asdict of a config stays plain data
    assert HeadSolver.parse("exact") is HeadSolver.EXACT and PriorSelection.parse("cv") is PriorSelection.CV
    with pytest.raises(InvalidInputError, match=r"unknown head solver 'sgd'; choose one of \('exact', 'radam'\)"):
        HeadConfig(solver="sgd")
    assert LastLayerLaplace(prior_precision=PriorSelection.EVIDENCE).prior_precision == "evidence"
    assert PriorSelection.choices() == ("cv", "cv-predictive", "evidence")

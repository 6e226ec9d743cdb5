"""Session headers save the posterior's resolved options, so a reload replays the same update."""

import pytest
import torch

from bayesal.exceptions import InvalidInputError
from bayesal.labeling.config import LEGACY_POSTERIOR_DEFAULTS, new_header, saved_options
from bayesal.laplace import HeadConfig, LastLayerLaplace, PosteriorOptions


def _header(options=None):
    x = torch.randn(20, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return new_header(x, 3, strategy={"name": "margin", "kwargs": {}, "object": None}, options=options,
                      retrain_every=None, candidate_size=None, random_state=0, meta=None)


def test_new_header_saves_the_resolved_defaults():
    header = _header()
    default = LastLayerLaplace()
    assert header["posterior"]["curvature"] == default.curvature.value
    assert header["posterior"]["steps"] == default.steps
    assert header["posterior"]["prior_precision"] == default.prior_precision == "cv"
    assert header["gamma"] == default.gamma
    assert header["head"]["solver"] == "exact"
    assert saved_options(header) == PosteriorOptions()


def test_given_options_are_saved_as_given_and_read_back():
    options = PosteriorOptions(curvature="gaussian", steps=2, prior_precision=3.0, gamma=0.5,
                               head=HeadConfig.paper(epochs=7))
    header = _header(options)
    assert header["posterior"]["curvature"] == "gaussian"
    assert header["posterior"]["steps"] == 2
    assert (header["gamma"], header["head"]["epochs"]) == (0.5, 7)
    assert saved_options(header) == options


def test_the_header_layout_is_unchanged():
    """The layout older versions read: ``posterior`` (flat, now with the predictive's ``spread`` and the
    early phase's ``exact_until``), ``head`` and ``gamma``."""
    header = _header(PosteriorOptions.paper())
    assert set(header["posterior"]) == {"prior_precision", "curvature", "hessian", "lambda_mf", "steps", "spread",
                                        "exact_until"}
    assert all(isinstance(v, (int, float, str)) and type(v).__module__ == "builtins"
               for v in [*header["posterior"].values(), *header["head"].values()])


def test_headers_without_update_options_reload_with_the_former_defaults():
    header = _header()
    for key in ("curvature", "steps", "prior_precision"):
        del header["posterior"][key]
    options = saved_options(header)
    assert options.curvature.value == LEGACY_POSTERIOR_DEFAULTS["curvature"] == "gaussian"
    assert options.steps == LEGACY_POSTERIOR_DEFAULTS["steps"] == 1
    assert options.prior_precision == "cv"  # sessions that did not set λ₀ used the posterior's default
    post = options.posterior()
    assert (post.curvature.value, post.steps) == ("gaussian", 1)


def test_headers_without_a_spread_reload_with_the_plain_laplace_predictive():
    header = _header()
    assert header["posterior"]["spread"] == "cv"
    del header["posterior"]["spread"]
    assert saved_options(header).spread == 1.0 == LEGACY_POSTERIOR_DEFAULTS["spread"]
    del header["posterior"]["exact_until"]
    assert saved_options(header).exact_until == 0 == LEGACY_POSTERIOR_DEFAULTS["exact_until"]


def test_bad_saved_options_are_refused():
    header = _header()
    header["posterior"]["prior"] = 1.0
    with pytest.raises(InvalidInputError, match="unknown posterior option"):
        saved_options(header)
    header = _header()
    header["head"]["epoch"] = 3
    with pytest.raises(InvalidInputError, match="unknown head option"):
        saved_options(header)
    with pytest.raises(InvalidInputError, match="options must be a PosteriorOptions"):
        _header({"gamma": 1.0})

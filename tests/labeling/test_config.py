"""Session headers save the posterior's resolved update options, so a reload replays the same update."""

import torch

from bayesal.labeling.config import LEGACY_POSTERIOR_DEFAULTS, new_header, saved_posterior_config
from bayesal.laplace import LastLayerLaplace


def _header(**posterior):
    x = torch.randn(20, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return new_header(x, 3, strategy={"name": "margin", "kwargs": {}, "object": None},
                      posterior_config=posterior or None, head_config=None, gamma=None, retrain_every=None,
                      candidate_size=None, random_state=0, meta=None)


def test_new_header_saves_the_resolved_defaults():
    header = _header()
    default = LastLayerLaplace()
    assert header["posterior"]["curvature"] == default.curvature.value
    assert header["posterior"]["steps"] == default.steps
    assert header["gamma"] == default.gamma
    assert saved_posterior_config(header)["steps"] == default.steps


def test_given_options_are_saved_as_given():
    header = _header(curvature="gaussian", steps=2)
    assert header["posterior"]["curvature"] == "gaussian"
    assert header["posterior"]["steps"] == 2


def test_headers_without_update_options_reload_with_the_former_defaults():
    header = _header()
    for key in ("curvature", "steps"):
        del header["posterior"][key]
    cfg = saved_posterior_config(header)
    assert cfg["curvature"] == LEGACY_POSTERIOR_DEFAULTS["curvature"] == "gaussian"
    assert cfg["steps"] == LEGACY_POSTERIOR_DEFAULTS["steps"] == 1
    post = LastLayerLaplace(**cfg)
    assert (post.curvature.value, post.steps) == ("gaussian", 1)

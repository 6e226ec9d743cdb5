"""The backend's settings: one PosteriorOptions for every project."""

from __future__ import annotations

import pytest

from bayesal.exceptions import InvalidInputError
from bayesal.labelstudio.backend import BackendSettings
from bayesal.labelstudio.config import parse_label_config
from bayesal.laplace import FIDELITY_OPTIONS, HeadConfig, PosteriorOptions

D = 4
XML = ('<View><Text name="t" value="$text"/><Choices name="c" toName="t">'
       '<Choice value="a"/><Choice value="b"/><Choice value="c"/></Choices></View>')
CONFIG = parse_label_config(XML)


def test_default_posterior_is_the_library_update_with_a_fixed_prior():
    options = BackendSettings().posterior
    assert options == PosteriorOptions(prior_precision=1.0)
    assert {k: options.to_dict()[k] for k in FIDELITY_OPTIONS} == FIDELITY_OPTIONS
    assert options.head == HeadConfig()


@pytest.mark.parametrize("bad, match", [
    (PosteriorOptions(), "needs a number as prior_precision, got 'cv'"),
    (PosteriorOptions(prior_precision=1.0, hessian="full"), "shared covariance"),
    (PosteriorOptions(prior_precision=1.0, lambda_mf=0.1), "mean-field"),
    ({"gamma": 1.0}, "posterior must be a PosteriorOptions"),
])
def test_settings_the_backend_cannot_use_are_refused(bad, match):
    with pytest.raises(InvalidInputError, match=match):
        BackendSettings(posterior=bad)


def test_the_projects_use_the_settings_posterior(tmp_path):
    from bayesal.labelstudio.backend import LabelStudioBackend

    class Fixed:
        dim = D

        def config(self):
            return {"name": "fixed"}

    options = PosteriorOptions.paper(gamma=3.0, prior_precision=2.0)
    backend = LabelStudioBackend(tmp_path, BackendSettings(posterior=options, seed=0, fsync=False),
                                 backbones={"text": Fixed()})
    try:
        model = backend.project("1.100", XML).model
        post = model.posterior()
        assert (post.gamma, post.steps, post.curvature.value, post.prior_precision) == (3.0, 1, "gaussian", 2.0)
        assert model.head_config == HeadConfig.paper()
    finally:
        backend.close()

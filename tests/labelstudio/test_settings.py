"""The backend's settings: one PosteriorOptions for every project, and the score strategies of the registry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bayesal.exceptions import InvalidInputError
from bayesal.labelstudio.backend import BackendSettings
from bayesal.labelstudio.config import parse_label_config
from bayesal.labelstudio.project import SCORE_STRATEGIES, ProjectModel
from bayesal.laplace import FIDELITY_OPTIONS, HeadConfig, PosteriorOptions
from bayesal.strategies import EntropySampling, register_strategy, registration

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


def test_a_registered_score_strategy_serves_label_studio(tmp_path, monkeypatch):
    monkeypatch.setattr(registration, "_REGISTRY", dict(registration._REGISTRY))
    monkeypatch.setattr(registration, "_ALIASES", dict(registration._ALIASES))

    @register_strategy("plain_entropy")
    class PlainEntropy(EntropySampling):
        name = "plain_entropy"

    assert "plain_entropy" not in SCORE_STRATEGIES  # the constant lists the shipped ones
    model = ProjectModel(tmp_path / "p", D, strategy="plain_entropy", prior_precision=1.0, seed=0, fsync=False)
    ref = ProjectModel(tmp_path / "q", D, strategy="entropy", prior_precision=1.0, seed=0, fsync=False)
    try:
        x = np.random.default_rng(0).normal(size=(5, D)).astype(np.float32)
        for m in (model, ref):
            m.set_config(CONFIG)
            m.annotate(1, 1, ["b"], x[0])
        torch.testing.assert_close(model.predict(x)[1], ref.predict(x)[1])
    finally:
        model.close()
        ref.close()
    with pytest.raises(InvalidInputError, match="gives no per-task score"):
        ProjectModel(tmp_path / "r", D, strategy="badge")

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


def test_a_chosen_prior_starts_at_one_and_each_training_chooses_it_and_the_spread(tmp_path):
    """λ₀ = "cv": the prior before any refit is N(0, I) (as a session's); Start Training refits with λ₀
    and the spread chosen on the annotations; a restart, from the snapshot or the log alone, agrees."""
    from bayesal.labeling import PosteriorFold
    from bayesal.labelstudio.backend import LabelStudioBackend
    from bayesal.labelstudio.project import SNAPSHOT_NAME, TRAIN_TAG

    class Fixed:
        dim = D

        def config(self):
            return {"name": "fixed"}

    assert BackendSettings(posterior=PosteriorOptions()).posterior.chooses_prior
    rng = np.random.default_rng(1)
    y = np.arange(24) % 3
    x = (rng.normal(size=(24, D)) + 2.0 * np.eye(3, D)[y]).astype(np.float32)
    settings = BackendSettings(posterior=PosteriorOptions(head=HeadConfig(epochs=20)), seed=0, fsync=False)
    backend = LabelStudioBackend(tmp_path, settings, backbones={"text": Fixed()})
    try:
        model = backend.project("1.100", XML).model
        prior = model.posterior()
        assert prior.fitted_prior_precision == 1.0 and prior.n_updates_ == 0
        for i in range(len(y)):
            model.annotate(i + 1, i + 1, ["abc"[y[i]]], x[i])
        assert model.posterior().fitted_prior_precision == 1.0  # updates of the prior: no refit yet
        model.train()
        post = model.posterior()
        # the refit of the engine's fold on these annotations, seeded by the train marker's position
        fold = PosteriorFold({**model._pcfg, "head_config": model.head_config}, seed=0, tag=TRAIN_TAG)
        onehot = torch.nn.functional.one_hot(torch.as_tensor(y), 3).to(torch.float64)
        ref = fold.fit(torch.as_tensor(x, dtype=torch.float64), onehot, 3, len(y) + 2)
        assert post.prior_precision == "cv" and post.fitted_prior_precision == ref.fitted_prior_precision
        assert post.fitted_prior_precision != 1.0
        torch.testing.assert_close(post.state_dict()["mean"], ref.state_dict()["mean"], atol=1e-10, rtol=0)
        probs = model.predict(x)[0]
    finally:
        backend.close()
    folder = next(tmp_path.glob("project-1-*"))
    for from_log_only in (False, True):
        if from_log_only:
            (folder / SNAPSHOT_NAME).unlink()
        backend = LabelStudioBackend(tmp_path, settings, backbones={"text": Fixed()})
        try:
            again = backend.project("1.100").model
            assert again.posterior().fitted_prior_precision == post.fitted_prior_precision
            torch.testing.assert_close(again.predict(x)[0], probs, atol=1e-10, rtol=0)
        finally:
            backend.close()

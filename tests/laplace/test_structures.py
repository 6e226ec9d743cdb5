"""Covariance structures: the factory builds the registered subclass, and a new structure plugs in by name."""

from __future__ import annotations

import pytest
import torch

from bayesal import LastLayerLaplace
from bayesal.exceptions import InvalidInputError
from bayesal.laplace import FullLaplace, SharedLaplace, register_structure, structure_names
from bayesal.laplace import structures as structures_module


@pytest.fixture
def toy() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(40, 4, generator=gen, dtype=torch.float64)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()


def test_factory_builds_the_named_structure() -> None:
    assert set(structure_names()) >= {"shared", "full"}
    assert type(LastLayerLaplace()) is SharedLaplace
    assert type(LastLayerLaplace(hessian="full")) is FullLaplace
    assert type(LastLayerLaplace(1.0, "gaussian", "full")) is FullLaplace  # positional hessian
    assert LastLayerLaplace(hessian="full").hessian == "full"
    with pytest.raises(InvalidInputError, match="unknown hessian 'diagonal'.*shared"):
        LastLayerLaplace(hessian="diagonal")
    with pytest.raises(InvalidInputError, match="shared"):
        SharedLaplace(hessian="full")


def test_state_dict_reloads_the_same_structure(toy) -> None:
    x, y = toy
    for hessian in ("shared", "full"):
        post = LastLayerLaplace(prior_precision=1.0, hessian=hessian).fit(x, y)
        back = LastLayerLaplace.from_state_dict(post.state_dict())
        assert type(back) is type(post)
        torch.testing.assert_close(back.predict_proba(x), post.predict_proba(x), rtol=0, atol=0)


def test_fast_paths_of_the_shared_covariance_are_refused_by_the_full_ggn(toy) -> None:
    x, y = toy
    full = LastLayerLaplace(prior_precision=1.0, hessian="full").fit(x, y)
    for call in (lambda: full.logit_moments(x), lambda: full.covariance_product(x),
                 lambda: full.logit_step(x[0], torch.eye(3, dtype=x.dtype)[0])):
        with pytest.raises(InvalidInputError, match="hessian='shared'.*'full'"):
            call()


def test_weight_covariance_is_the_covariance_of_vec_w(toy) -> None:
    x, y = toy
    shared = LastLayerLaplace(prior_precision=1.0).fit(x, y)
    kron = torch.kron(torch.eye(3, dtype=x.dtype), shared.covariance.contiguous())
    torch.testing.assert_close(shared.weight_covariance(), kron)
    full = LastLayerLaplace(prior_precision=1.0, hessian="full").fit(x, y)
    assert full.weight_covariance() is full.covariance


def test_a_new_structure_is_one_registered_subclass(toy, monkeypatch) -> None:
    """A structure registered under a new name is built, updated and reloaded by that name."""
    monkeypatch.setattr(structures_module, "_STRUCTURES", dict(structures_module._STRUCTURES))

    @register_structure("tempered")
    class TemperedLaplace(SharedLaplace):
        """The shared covariance with logit variances doubled (a toy structure for this test)."""

        def _logit_cov_chunk(self, x: torch.Tensor) -> torch.Tensor:
            return 2.0 * super()._logit_cov_chunk(x)

    x, y = toy
    post = LastLayerLaplace(prior_precision=1.0, hessian="tempered").fit(x[:30], y[:30])
    assert type(post) is TemperedLaplace and post.hessian == "tempered"
    base = LastLayerLaplace(prior_precision=1.0).fit(x[:30], y[:30])
    torch.testing.assert_close(post.logit_variance(x), 2.0 * base.logit_variance(x))
    updated = post.update(x[30:], y[30:])
    assert type(updated) is TemperedLaplace
    back = LastLayerLaplace.from_state_dict(updated.state_dict())
    assert type(back) is TemperedLaplace
    torch.testing.assert_close(back.predict_proba(x), updated.predict_proba(x))
    with pytest.raises(InvalidInputError, match="already registered"):
        register_structure("tempered")(type("Other", (SharedLaplace,), {}))


def test_a_structure_missing_hooks_is_refused_at_registration() -> None:
    incomplete = type("Incomplete", (LastLayerLaplace,), {"_num_params": lambda self: 1})
    with pytest.raises(InvalidInputError, match="Incomplete does not implement.*_hessian_factor"):
        register_structure("incomplete")(incomplete)
    assert "incomplete" not in structure_names()

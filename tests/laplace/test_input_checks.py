"""Numbers, dtypes and feature scales are checked where they enter the API: a clear bayesal error,
never a TypeError from deep inside, a silent NaN or a non-SPD covariance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bayesal.exceptions import InvalidInputError, NotFittedError, NumericalError
from bayesal.laplace.linalg import is_spd
from bayesal.laplace.posterior import LastLayerLaplace
from bayesal.utils.validation import max_feature_scale


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"prior_precision": "1"}, "prior_precision must be a number, got str '1'"),
        ({"prior_precision": 0}, "prior_precision must be > 0"),
        ({"prior_precision": float("nan")}, "prior_precision must be a finite number"),
        ({"prior_precision": True}, "prior_precision must be a number"),
        ({"lambda_mf": "0.4"}, "lambda_mf must be a number"),
        ({"gamma": "10"}, "gamma must be a finite number >= 0"),
        ({"dtype": torch.float16}, "dtype must be torch.float32 or torch.float64, got torch.float16"),
        ({"dtype": torch.int64}, "dtype must be torch.float32 or torch.float64"),
        ({"chunk_size": 2.5}, "chunk_size must be a whole number"),
    ],
)
def test_constructor_arguments(kwargs, words):
    with pytest.raises(InvalidInputError, match=words):
        LastLayerLaplace(**kwargs)


def test_dtype_given_as_numpy_or_string_is_accepted():
    assert LastLayerLaplace(dtype=np.float32).dtype == torch.float32
    assert LastLayerLaplace(dtype="float64").dtype == torch.float64


def test_call_arguments(toy):
    x, y, w, b = toy
    post = LastLayerLaplace().fit(x, y, weight=w, bias=b)
    with pytest.raises(InvalidInputError, match="n_samples must be a whole number, got float 2.5"):
        post.predict_proba(x, method="mc", n_samples=2.5)
    with pytest.raises(InvalidInputError, match="n_samples must be >= 1"):
        post.sample_logits(x, 0)
    with pytest.raises(InvalidInputError, match="n_samples must be a whole number"):
        post.sample_weights("3")
    with pytest.raises(InvalidInputError, match="gamma"):
        post.update(x[:2], y[:2], gamma="10")
    with pytest.raises(InvalidInputError, match="lambda_mf must be a number"):
        post.predict_proba(x, lambda_mf="1")
    assert post.predict_proba(x, method="mc", n_samples=np.int64(5), generator=torch.Generator().manual_seed(0)).shape == (60, 3)


def test_unfitted_posterior_raises_not_fitted(toy):
    x = toy[0]
    for call in (lambda p: p.predict_proba(x), lambda p: p.logits(x), lambda p: p.update(x, toy[1]),
                 lambda p: p.sample_weights(2), lambda p: p.state_dict()):
        with pytest.raises(NotFittedError, match="not fitted"):
            call(LastLayerLaplace())
    with pytest.raises(RuntimeError):  # still a RuntimeError for existing callers
        LastLayerLaplace().predict(x)


@pytest.mark.parametrize("scale", [1e160, 1e200, 1e300])
def test_features_too_large_for_the_dtype_are_refused(toy, scale):
    x, y, w, b = toy
    with pytest.raises(NumericalError, match=r"row 0.*rescale the features"):
        LastLayerLaplace().fit(x * scale, y, weight=w / scale, bias=b)
    post = LastLayerLaplace().fit(x, y, weight=w, bias=b)
    big = x.clone()
    big[7] *= scale
    with pytest.raises(NumericalError, match="row 7"):
        post.predict_proba(big)
    with pytest.raises(NumericalError):
        post.update(big[5:9], y[5:9])


def test_float32_limit_is_lower(toy):
    x, y, w, b = toy
    post = LastLayerLaplace(dtype=torch.float32).fit(x, y, weight=w, bias=b)
    assert max_feature_scale(torch.float32) < 1e16 < max_feature_scale(torch.float64)
    with pytest.raises(NumericalError, match="float32"):
        post.predict_proba(x * 1e17)


@pytest.mark.parametrize("scale", [1e-100, 1e-20, 1.0, 1e20, 1e100, 1e140])
def test_posterior_stays_spd_and_finite_up_to_the_limit(toy, scale):
    x, y, w, b = toy
    post = LastLayerLaplace().fit(x * scale, y, weight=w / scale, bias=b)
    upd = post.update(x[:6] * scale, y[:6])
    for p in (post, upd):
        assert is_spd(p.covariance_)
        probs = p.predict_proba(x * scale)
        assert bool(torch.isfinite(probs).all()) and torch.allclose(probs.sum(1), torch.ones(60, dtype=probs.dtype))
        assert bool(torch.isfinite(p.logit_variance(x * scale)).all())


@pytest.mark.parametrize(
    ("features", "labels", "message"),
    [
        (torch.zeros(5, 0), torch.tensor([0, 1, 0, 1, 0]), "no columns"),
        (torch.randn(5, 2, dtype=torch.complex64), torch.tensor([0, 1, 0, 1, 0]), "complex"),
        (torch.randn(5, 2), torch.tensor([2, 2, 2, 2, 2]), "single class.*num_classes"),
    ],
)
def test_fit_refuses_features_or_labels_it_would_misread(features, labels, message):
    with pytest.raises(InvalidInputError, match=message):
        LastLayerLaplace(prior_precision=1.0).fit(features, labels)


def test_a_single_labeled_class_fits_once_the_classes_are_given():
    post = LastLayerLaplace(prior_precision=1.0).fit(torch.randn(5, 2), torch.tensor([2] * 5), num_classes=3)
    assert post.num_classes == 3


def test_an_update_refuses_a_step_size_that_overflows():
    post = LastLayerLaplace(prior_precision=1.0).fit(torch.randn(6, 2), torch.tensor([0, 1] * 3))
    with pytest.raises(InvalidInputError, match="gamma must be at most"):
        post.update(torch.randn(1, 2), torch.tensor([1]), gamma=1e300)

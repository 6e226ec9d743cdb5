"""The model's guess shown by the labeling UIs: none without information, the top class (or the classes
tied at the top) otherwise."""

from __future__ import annotations

import pytest
import torch

from bayesal.serve.guess import TOLERANCE, model_guess


def test_no_labels_means_no_guess_even_for_a_peaked_prediction():
    g = model_guess(torch.tensor([0.7, 0.2, 0.1]), n_labeled=0)
    assert g.best == [] and g.no_guess == "no labels yet"
    assert [c for c, _ in g.top] == [0, 1, 2]  # the probabilities are still there, in order


@pytest.mark.parametrize("probs", [[0.25] * 4, [0.25 + 0.4 * TOLERANCE, 0.25, 0.25, 0.25 - 0.4 * TOLERANCE], [1.0]])
def test_a_uniform_prediction_is_no_guess(probs):
    g = model_guess(probs, n_labeled=5)
    assert g.best == [] and g.no_guess == "every class is equally likely"


def test_a_class_that_stands_out_is_the_guess():
    g = model_guess(torch.tensor([0.08, 0.24, 0.08, 0.6]), n_labeled=1, k=2)
    assert g.no_guess is None and g.best == [3]
    assert g.top == [(3, pytest.approx(0.6)), (1, pytest.approx(0.24))]


def test_classes_tied_at_the_top_are_all_the_guess():
    g = model_guess([0.44, 0.05, 0.442, 0.068], n_labeled=60)
    assert g.no_guess is None and g.best == [2, 0] and [c for c, _ in g.top] == [2, 0, 3]
    assert model_guess([0.44, 0.05, 0.45, 0.06], n_labeled=60).best == [2]
    # one label of a class the item does not look like: the other classes tie above it
    g = model_guess([0.3, 0.3, 0.1, 0.3], n_labeled=1, k=2)
    assert g.best == [0, 1, 3] and len(g.top) == 2


def test_a_prior_mean_makes_the_prediction_before_the_first_label_a_guess():
    g = model_guess(torch.tensor([0.7, 0.2, 0.1]), n_labeled=0, prior_informed=True)
    assert g.best == [0] and g.no_guess is None
    # a uniform prediction stays no guess, prior or not
    g = model_guess(torch.tensor([1 / 3, 1 / 3, 1 / 3]), n_labeled=0, prior_informed=True)
    assert g.best == [] and g.no_guess == "every class is equally likely"

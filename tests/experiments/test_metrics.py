import math

import numpy as np
import pytest
import torch

from bayesal.exceptions import InvalidInputError
from bayesal.experiments.metrics import accuracy, aulc, brier, decision_flips, ece, evaluate, nll


def test_metrics_on_known_values():
    p = torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1])
    assert accuracy(p, y) == pytest.approx(1 / 3)
    assert nll(p, y) == pytest.approx(-(math.log(0.9) + math.log(0.4) + math.log(0.3)) / 3)
    assert brier(p, y) == pytest.approx(((0.1**2 * 2) + (0.6**2 * 2) + (0.7**2 * 2)) / 3)
    # bins: 0.9 (correct), 0.6 (wrong), 0.7 (wrong): |0.9-1|/3 + |0.6-0|/3 + |0.7-0|/3
    assert ece(p, y) == pytest.approx((0.1 + 0.6 + 0.7) / 3)
    assert set(evaluate(p, y)) == {"accuracy", "nll", "brier", "ece"}


def test_perfect_calibrated_predictions():
    y = torch.arange(4) % 2
    p = torch.nn.functional.one_hot(y, 2).double()
    assert accuracy(p, y) == 1.0 and brier(p, y) == 0.0 and ece(p, y) == 0.0
    assert nll(p, y) == pytest.approx(0.0, abs=1e-9)


def test_aulc_and_flips():
    assert aulc([10, 20, 30], [0.5, 0.5, 0.5]) == pytest.approx(0.5)
    assert aulc([10, 20, 30], [0.0, 0.5, 1.0]) == pytest.approx(0.5)
    assert aulc(np.array([10, 20]), [0.2, 0.4]) == pytest.approx(0.3)
    a = torch.tensor([[0.9, 0.1], [0.2, 0.8]])
    b = torch.tensor([[0.1, 0.9], [0.2, 0.8]])
    assert decision_flips(a, b) == 0.5


def test_shape_errors():
    with pytest.raises(InvalidInputError, match="expected probs"):
        accuracy(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long))

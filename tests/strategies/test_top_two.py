"""top_two: the two largest entries per row, equal to topk(2) values, whatever the layout."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bayesal.strategies._common import top_two


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 50), c=st.integers(2, 12), seed=st.integers(0, 10_000), levels=st.sampled_from([3, 1000]),
       class_major=st.booleans())
def test_top_two_equals_topk_including_ties(n, c, seed, levels, class_major):
    g = torch.Generator().manual_seed(seed)
    # few distinct levels make ties between the largest entries frequent
    p = torch.randint(levels, (n, c), generator=g).double() / levels
    if class_major:  # the (N, C) view of a (C, N) tensor that the mean-field predictive returns
        p = p.T.contiguous().T
    first, second = top_two(p)
    ref = p.topk(2, dim=1).values
    assert torch.equal(first, ref[:, 0]) and torch.equal(second, ref[:, 1])


def test_top_two_propagates_nan_as_margin_does():
    p = torch.tensor([[0.2, float("nan"), 0.8], [0.1, 0.6, 0.3]], dtype=torch.float64)
    first, second = top_two(p)
    assert torch.isnan(first[0] - second[0])
    assert first[1] == 0.6 and second[1] == 0.3

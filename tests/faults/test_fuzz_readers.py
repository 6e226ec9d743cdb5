"""Every reader, fed >= 1,000 generated inputs each: a bayesal error or a correct load, never another
exception type, a silently wrong load or a hang."""

from __future__ import annotations

import pytest
from families import READERS
from faultkit import Tally

N_INPUTS = 1000


@pytest.mark.parametrize("name", sorted(READERS))
def test_reader_fuzz(name, tmp_path):
    tally = Tally()
    READERS[name](tally, tmp_path, N_INPUTS)
    assert tally.inputs_tried >= N_INPUTS
    assert tally.bad() == 0, (tally.line(), tally.examples)
    assert tally.clear_errors > 0 or name in ("data_parquet",), "no input was refused: the fuzzing is too tame"

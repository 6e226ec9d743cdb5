"""The service surfaces of the fault campaign (Label Studio endpoints, serve's API, pool folders, session
headers, foreign results files, full disks, update batch sizes), each with a few generated inputs: a
clear error or a correct result, never another exception, a silent drop, a hang or a lost label or row
(benchmarks/faults.py runs them with many more)."""

from __future__ import annotations

import pytest
from faultkit import Tally
from surfaces import SURFACES

N_INPUTS = 20


@pytest.mark.parametrize("name", sorted(SURFACES))
def test_surface_faults(name, tmp_path):
    pytest.importorskip("fastapi")
    tally = Tally()
    SURFACES[name](tally, tmp_path, N_INPUTS)
    assert tally.inputs_tried >= 1
    assert tally.bad() == 0, (tally.line(), tally.examples)

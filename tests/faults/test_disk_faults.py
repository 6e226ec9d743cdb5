"""A full disk (whole or short writes failing at the N-th os.write) and read-only directories for every
write path: a StorageError, the files as before the failed write, and the next write works once space
is back."""

from __future__ import annotations

from families import faults_disk
from faultkit import Tally


def test_disk_full_and_read_only(tmp_path):
    tally = Tally()
    faults_disk(tally, tmp_path, 200)
    assert tally.inputs_tried >= 200 and tally.clear_errors >= 100
    assert tally.bad() == 0, (tally.line(), tally.examples)

"""SIGKILL at random points of ``bayesal run`` and of a labeling session (>= 50 trials each): every
acknowledged result row and label survives, results files stay readable, a rerun finishes the work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RUNNER = Path(__file__).with_name("kill_runner.py")
SRC = Path(__file__).resolve().parents[2] / "src"


def _trials(workload: str, tmp_path: Path, n: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(RUNNER), workload, str(tmp_path), str(n), "7"],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_kill_bayesal_run(tmp_path):
    res = _trials("run", tmp_path, 51)
    assert res["kills"] >= 50 and res["errors"] == 0 and res["hangs"] == 0
    assert res["acked_runs"] >= 10, res  # kills landed while runs were being written
    assert res["lost_result_rows"] == 0, res


@pytest.mark.slow
def test_kill_labeling_session(tmp_path):
    res = _trials("session", tmp_path, 51)
    assert res["kills"] >= 50 and res["acked_labels"] >= 200, res
    assert res["lost_labels"] == 0 and res["hangs"] == 0, res

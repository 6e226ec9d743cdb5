"""``bayesal review DIR``: the terminal review of a saved session's labels, with piped verdicts."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from bayesal.cli.commands import build_parser
from bayesal.cli.review import review_main
from bayesal.data import load_dataset
from bayesal.labeling.session import Session


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture
def session_dir(tmp_path: Path, digits) -> tuple[Path, dict[int, int]]:
    """A saved digits session with 40 labels, 4 of them wrong (by 3 classes)."""
    state = tmp_path / "run"
    s = Session(digits.train_features, [str(c) for c in range(10)], random_state=0, background=False,
                state_dir=state, meta={"dataset": "digits"}, fsync=False)
    wrong = {}
    for i in range(40):
        label = int(digits.train_labels[i])
        if i % 10 == 4:
            label = (label + 3) % 10
            wrong[i] = label
        s.tell(i, label)
    s.close()
    return state, wrong


def run(args: list[str], answers: str) -> tuple[int, str]:
    out = io.StringIO()
    rc = review_main(build_parser().parse_args(["review", *args]), stdin=io.StringIO(answers), stdout=out)
    return rc, out.getvalue()


def test_keep_correct_and_quit(session_dir, digits):
    state, wrong = session_dir
    before = Session.resume(state, digits.train_features)
    top = before.suspicious(3)
    before.close()
    first, second = top[0]["index"], top[1]["index"]
    fix = (top[1]["label_index"] + 1) % 10  # a label other than the given one
    rc, out = run([str(state), "--min-doubt", "0"], f"\nnine\n#{fix}\nq\n")
    assert rc == 0
    assert f"--- instance #{first} (doubt" in out and "given label: [" in out and "model, from the other labels: [" in out
    assert f"kept #{first}" in out
    assert "error: unknown class 'nine'" in out
    assert f"corrected #{second}" in out
    assert "reviewed 2: 1 kept, 1 corrected" in out
    s = Session.resume(state, digits.train_features)
    try:
        assert s.labels[second] == fix and s.history[-1] == {**s.history[-1], "op": "correct", "index": second}
        assert s.n_labeled == 40
    finally:
        s.close()


def test_end_of_input_max_items_and_threshold(session_dir):
    state, _ = session_dir
    rc, out = run([str(state), "--max-items", "2", "--min-doubt", "0"], "\n\n\n")
    assert rc == 0 and out.count("--- instance #") == 2 and "reviewed 2: 2 kept, 0 corrected" in out
    rc, out = run([str(state), "--min-doubt", "1"], "")
    assert "no label left to review" in out and "reviewed 0" in out


def test_the_command_line(session_dir):
    state, _ = session_dir
    proc = subprocess.run([sys.executable, "-m", "bayesal", "review", str(state), "--max-items", "1"],
                          input="\n", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--- instance #" in proc.stdout and "reviewed 1: 1 kept" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "bayesal", "review", str(state), "--min-doubt", "2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "--min-doubt" in proc.stderr

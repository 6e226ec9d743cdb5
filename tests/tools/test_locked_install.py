"""The lock-file installer: a pin pip cannot satisfy is reported in one line naming it and its file."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "locked_install.py"


def _load():
    spec = importlib.util.spec_from_file_location("locked_install", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


locked_install = _load()

CONFLICT_LOG = """\
ERROR: Cannot install bayesal because these package versions have conflicting dependencies.

The conflict is caused by:
    bayesal 0.1.0 depends on numpy>=1.26
    The user requested (constraint) numpy==9.9.9

ERROR: ResolutionImpossible: for help visit https://pip.pypa.io/en/latest/topics/dependency-resolution/
"""

MISSING_LOG = """\
ERROR: Could not find a version that satisfies the requirement Jinja2==0.0.1 (from versions: 3.1.6)
ERROR: No matching distribution found for Jinja2==0.0.1
"""


@pytest.fixture
def lock(tmp_path: Path) -> Path:
    path = tmp_path / "constraints" / "main.txt"
    path.parent.mkdir()
    path.write_text("# header\nnumpy==9.9.9\njinja2==0.0.1  # a comment\nsix==99.0\n", encoding="utf-8")
    return path


def test_read_pins_normalises_names_and_skips_comments(lock: Path) -> None:
    pins = locked_install.read_pins(lock)
    assert pins == {"numpy": "numpy==9.9.9", "jinja2": "jinja2==0.0.1", "six": "six==99.0"}
    assert locked_install.canonical("Typing_Extensions") == "typing-extensions"


@pytest.mark.parametrize(("log", "pin"), [(CONFLICT_LOG, "numpy==9.9.9"), (MISSING_LOG, "jinja2==0.0.1")])
def test_diagnose_names_the_pin_and_the_file(log: str, pin: str, lock: Path) -> None:
    line = locked_install.diagnose(log, lock)
    assert "\n" not in line
    assert pin in line and str(lock) in line and "make lock" in line


def test_diagnose_of_an_unpinned_package_says_so(tmp_path: Path) -> None:
    empty = tmp_path / "lock.txt"
    empty.write_text("", encoding="utf-8")
    line = locked_install.diagnose("ERROR: No matching distribution found for frobnicate==1.0\n", empty)
    assert "frobnicate==1.0" in line and "not pinned" in line


def test_diagnose_without_a_known_pattern_quotes_pips_last_error(lock: Path) -> None:
    line = locked_install.diagnose("Collecting x\nERROR: disk quota exceeded\n", lock)
    assert line.endswith("ERROR: disk quota exceeded")


def test_real_pip_failure_prints_one_line(lock: Path, tmp_path: Path) -> None:
    """pip itself (offline: an empty local index) cannot find the pinned version: one line on stderr."""
    log = tmp_path / "install.log"
    empty_index = tmp_path / "wheels"
    empty_index.mkdir()
    proc = subprocess.run(
        [sys.executable, str(TOOL), "install", "--python", sys.executable, "--lock", str(lock), "--log", str(log),
         "--", "--dry-run", "--no-index", "--find-links", str(empty_index), "six"],
        capture_output=True, text=True, check=False, timeout=120,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "six==99.0" in lines[0] and str(lock) in lines[0] and str(log) in lines[0]
    assert "six" in log.read_text(encoding="utf-8")  # pip's whole output is kept


def test_missing_lock_file_is_named(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(TOOL), "install", "--python", sys.executable, "--lock", str(tmp_path / "none.txt"),
         "--log", str(tmp_path / "log"), "--", "six"],
        capture_output=True, text=True, check=False, timeout=60,
    )
    assert proc.returncode == 1 and "none.txt" in proc.stderr and "make lock" in proc.stderr


def test_freeze_writes_a_header_and_sorted_pins(tmp_path: Path) -> None:
    out = tmp_path / "lock.txt"
    assert locked_install.freeze(sys.executable, out, "line one\nline two") == 0
    text = out.read_text(encoding="utf-8").splitlines()
    assert text[:2] == ["# line one", "# line two"]
    pins = [ln for ln in text if not ln.startswith("#")]
    assert pins == sorted(pins, key=str.lower) and any(ln.lower().startswith("pytest==") for ln in pins)
    assert not any(ln.startswith("-e ") for ln in pins)

"""(e) The terminal labeling command, end to end with piped answers on the digits dataset."""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from bayesal.cli.label import add_label_arguments, ascii_image, label_main, main, parse_answer, render_item
from bayesal.data import load_dataset
from bayesal.exceptions import CorruptStateError, InvalidInputError, SessionExistsError
from bayesal.labeling.session import STATE_NAME, Session


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_label_arguments(p)
    return p.parse_args(argv)


def run_inprocess(argv: list[str], answers: str = "") -> tuple[int, str]:
    out = io.StringIO()
    rc = label_main(parse(argv), stdin=io.StringIO(answers), stdout=out)
    return rc, out.getvalue()


def test_piped_session_end_to_end(tmp_path: Path, digits) -> None:
    state = tmp_path / "run"
    answers = "3\n5\nfoo\n42\ns\nu\n1\n2\nseven\n4\nq\n"
    proc = subprocess.run(
        [sys.executable, "-m", "bayesal.cli.label", "--dataset", "digits", "--state-dir", str(state),
         "--epochs", "5", "--retrain-every", "3", "--strategy", "margin"],
        input=answers, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "new session in" in out and "classes: [0] 0, [1] 1" in out
    assert "model: [" in out and "%" in out  # top-3 with confidence
    assert "@" in out or "#" in out  # ASCII-art digit
    assert "error: unknown class 'foo'" in out
    assert "error: class index 42 is out of range" in out
    assert "error: unknown class 'seven'" in out
    assert "skipped #" in out and "undone: skip #" in out
    # the signals start once two classes are labeled (the first answer alone gives one class)
    assert out.count("model's estimate of its accuracy on the pool") == 4 and "decision flips over last" in out
    assert out.count("stopping signals start once two classes are labeled") == 1
    assert "saved: 5 labels, 0 skipped" in out
    s = Session.resume(state, digits.train_features)
    assert Counter(s.named_labels.values()) == Counter(["3", "5", "1", "2", "4"])
    assert s.config["meta"]["dataset"] == "digits" and s.config["retrain_every"] == 3
    assert any(a.get("retrain") for a in s.history)  # the automatic retrain ran
    s.close()

    # continue the same session with the oracle (in process: quicker)
    rc, out = run_inprocess(["--resume", str(state), "--oracle", "--max-labels", "6", "--batch", "2"])
    assert rc == 0 and "resumed session" in out and out.count("(oracle)") == 6
    s = Session.resume(state, digits.train_features)
    assert s.n_labeled == 11
    oracle = [a["index"] for a in s.history if a["op"] == "tell"][5:]
    assert all(s.labels[i] == digits.train_labels[i] for i in oracle)
    s.close()


def test_new_sessions_reselect_on_the_doubling_schedule_unless_turned_off(tmp_path: Path, digits) -> None:
    answers = "".join(f"{c % 10}\n" for c in range(4))
    rc, out = run_inprocess(["--dataset", "digits", "--state-dir", str(tmp_path / "a"), "--retrain-every", "0",
                             "--reselect-base", "2", "--epochs", "3"], answers)
    assert rc == 0 and "saved: 4 labels" in out
    with Session.resume(tmp_path / "a", digits.train_features) as s:
        assert s.config["reselect"] == {"schedule": "doubling", "base": 2}
        assert [a.get("retrain", False) for a in s.history] == [False, True, False, True]  # at 2 and 4 labels
    rc, out = run_inprocess(["--dataset", "digits", "--state-dir", str(tmp_path / "b"), "--retrain-every", "0",
                             "--no-reselect"], answers)
    assert rc == 0
    with Session.resume(tmp_path / "b", digits.train_features) as s:
        assert s.config["reselect"] is None and not any(a.get("retrain") for a in s.history)


def test_end_of_input_quits_and_keeps_answers(tmp_path: Path, digits) -> None:
    rc, out = run_inprocess(["--dataset", "digits", "--state-dir", str(tmp_path / "a"), "--retrain-every", "0"], "0\n1\n")
    assert rc == 0 and "(end of input)" in out and "saved: 2 labels" in out
    s = Session.resume(tmp_path / "a", digits.train_features)
    assert sorted(s.named_labels.values()) == ["0", "1"]
    s.close()


def test_zero_labels_show_no_guess(tmp_path: Path) -> None:
    rc, out = run_inprocess(["--dataset", "digits", "--state-dir", str(tmp_path / "z"), "--retrain-every", "0"],
                            "0\nu\nq\n")
    assert rc == 0
    lines = [ln for ln in out.splitlines() if ln.startswith("model: ")]
    # before the first label and after undoing it every class is 1/10: no class is named as the model's pick
    assert lines[0] == "model: no guess yet (no labels yet; every class 10%)"
    assert lines[2] == lines[0] and len(lines) == 3
    # one label: the model has a guess, its most probable class first, more likely than 1/10
    second = lines[1].removeprefix("model: ").split(", ")
    assert len(second) == 3 and all(p.startswith("[") for p in second)
    assert int(second[0].rsplit(" ", 1)[1].rstrip("%")) > 10


def test_undo_nothing_and_retrain_messages(tmp_path: Path) -> None:
    rc, out = run_inprocess(["--dataset", "digits", "--state-dir", str(tmp_path / "b"), "--epochs", "3"], "u\nr\n?\n0\n1\nr\nq\n")
    assert rc == 0
    assert "error: nothing to undo" in out
    assert "error: retraining needs labels of at least 2 different classes" in out
    assert "retrained the head on 2 labels" in out


def test_errors_are_clear(tmp_path: Path, digits) -> None:
    assert main(["--resume", str(tmp_path / "missing")]) == 2
    assert main([]) == 2
    run_inprocess(["--dataset", "digits", "--state-dir", str(tmp_path / "c"), "--oracle", "--max-labels", "2", "--epochs", "3"])
    with pytest.raises(SessionExistsError, match="already holds a labeling session"):
        run_inprocess(["--dataset", "digits", "--state-dir", str(tmp_path / "c")])
    (tmp_path / "c" / STATE_NAME).write_bytes(b"broken")
    with pytest.raises(CorruptStateError, match="corrupt.*--recover"):
        run_inprocess(["--resume", str(tmp_path / "c")], "q\n")
    rc, out = run_inprocess(["--resume", str(tmp_path / "c"), "--recover"], "q\n")
    assert rc == 0 and "recovered session" in out and "2 labels" in out
    with pytest.raises(InvalidInputError, match="not 'other'"):
        run_inprocess(["--resume", str(tmp_path / "c"), "--dataset", "other"])


def test_cli_wiring(tmp_path: Path, monkeypatch) -> None:
    cli = pytest.importorskip("bayesal.cli.commands")
    monkeypatch.setattr(sys, "stdin", io.StringIO("q\n"))
    assert cli.main(["label", "--dataset", "digits", "--state-dir", str(tmp_path / "d")]) == 0
    assert (tmp_path / "d" / "labels.jsonl").exists()


def test_rendering() -> None:
    img = np.zeros((8, 8))
    img[2:6, 3] = 16.0
    art = ascii_image(img)
    rows = art.split("\n")
    assert len(rows) == 8 and rows[:2] == ["", ""] and rows[2:6] == ["      @@"] * 4  # 2 chars per pixel
    big = np.random.default_rng(0).random((100, 100, 3))
    assert max(len(ln) for ln in ascii_image(big).splitlines()) <= 2 * 32
    assert render_item("a short text", 3) == "a short text"
    assert render_item("x" * 1000, 3).endswith("…")
    assert render_item(None, 7) == "(instance #7)"
    assert len(render_item(np.eye(500), 9).split("\n")) == 32  # downsampled image
    assert render_item(np.zeros(5), 9).startswith("(instance #9")
    assert render_item(b"bytes text", 1) == "bytes text"


def test_numeric_class_names_are_not_confused_with_class_numbers() -> None:
    names = ["1", "2", "3", "4"]
    assert parse_answer("1", names) == "1" and parse_answer("#0", names) == 0
    with pytest.raises(InvalidInputError, match="class names are numbers"):
        parse_answer("0", names)
    digits = [str(c) for c in range(10)]  # names equal to their numbers: no ambiguity
    assert parse_answer("3", digits) == "3" and parse_answer("42", digits) == 42
    assert parse_answer("2", ["cat", "dog", "eel"]) == 2 and parse_answer("dog", ["cat", "dog", "eel"]) == "dog"


def test_redo_and_fix_commands(tmp_path: Path, digits) -> None:
    rc, out = run_inprocess(["--dataset", "digits", "--state-dir", str(tmp_path / "f"), "--retrain-every", "0"],
                            "3\n5\nu\nredo\n")
    assert rc == 0 and "undone: tell #" in out and "redone: tell #" in out
    s = Session.resume(tmp_path / "f", digits.train_features)
    first = next(iter(s.labels))
    s.close()
    rc, out = run_inprocess(["--resume", str(tmp_path / "f")], f"fix {first} 7\nfix 99999 1\nfix x\nq\n")
    assert f"corrected #{first} to '7'" in out and "out of range" in out and "usage: fix I LABEL" in out
    s = Session.resume(tmp_path / "f", digits.train_features)
    assert s.named_labels[first] == "7" and s.n_labeled == 2
    s.close()


def test_resume_a_session_on_a_user_csv_file(tmp_path: Path, digits) -> None:
    import pandas as pd

    df = pd.DataFrame(digits.train_features[:300], columns=[f"f{j}" for j in range(digits.num_features)])
    df["Target"] = [digits.class_names[c] for c in digits.train_labels[:300]]
    csv = tmp_path / "mine.csv"
    df.to_csv(csv)  # with pandas' index column, and a label column in another case
    with pytest.warns(UserWarning, match="ignoring index column"):
        rc, out = run_inprocess(["--dataset", str(csv), "--state-dir", str(tmp_path / "u"), "--oracle",
                                 "--max-labels", "3", "--epochs", "3"])
    assert rc == 0 and "saved: 3 labels" in out
    with pytest.warns(UserWarning, match="ignoring index column"):
        rc, out = run_inprocess(["--resume", str(tmp_path / "u"), "--oracle", "--max-labels", "2", "--epochs", "3"])
    assert rc == 0 and "resumed session" in out and "saved: 5 labels" in out
    with pytest.warns(UserWarning):
        rc, out = run_inprocess(["--resume", str(tmp_path / "u"), "--dataset", str(csv)], "q\n")
    assert rc == 0
    csv.rename(tmp_path / "moved.csv")
    with pytest.raises(InvalidInputError, match="no longer exists"):
        run_inprocess(["--resume", str(tmp_path / "u")])
    with pytest.warns(UserWarning):  # the moved file is accepted; the feature hash guards its content
        rc, out = run_inprocess(["--resume", str(tmp_path / "u"), "--dataset", str(tmp_path / "moved.csv")], "q\n")
    assert rc == 0 and "resumed session" in out
    with pytest.raises(InvalidInputError, match="must name that file"):
        run_inprocess(["--resume", str(tmp_path / "u"), "--dataset", "digits"])


def test_cli_recovers_from_the_state_file_when_the_log_is_gone(tmp_path: Path) -> None:
    from bayesal.labeling.session import LOG_NAME

    run_inprocess(["--dataset", "digits", "--state-dir", str(tmp_path / "g"), "--oracle", "--max-labels", "3",
                   "--epochs", "3"])
    (tmp_path / "g" / LOG_NAME).unlink()
    with pytest.raises(CorruptStateError, match="missing.*--recover"):
        run_inprocess(["--resume", str(tmp_path / "g")], "q\n")
    rc, out = run_inprocess(["--resume", str(tmp_path / "g"), "--recover"], "q\n")
    assert rc == 0 and "recovered session" in out and "3 labels" in out and "rebuilt the label log" in out
    with pytest.raises(InvalidInputError, match="only applies with --recover"):
        run_inprocess(["--resume", str(tmp_path / "g"), "--drop-damaged"])

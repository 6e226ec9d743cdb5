"""End-to-end: the CLI on small real data (scikit-learn's bundled digits), as a user runs it."""

import subprocess
import sys

import pandas as pd
import pytest

from bayesal.cli.commands import main
from bayesal.experiments import runner as loop
from bayesal.strategies import OracleStrategy, QueryStrategy, make_strategy


def test_run_then_plot_end_to_end(tmp_path):
    out = tmp_path / "results.parquet"
    cmd = [sys.executable, "-m", "bayesal", "run", "--dataset", "digits", "--strategy", "random", "margin",
           "seq-margin@most_likely", "--batch-size", "5", "--cycles", "2", "--seeds", "2", "--epochs", "50",
           "--candidate-size", "200", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "area under the learning curve" in proc.stdout
    df = pd.read_parquet(out)
    assert len(df) == 3 * 2 * 3  # strategies x seeds x (cycles + 1)
    assert set(df.strategy) == {"random", "margin", "seq-margin@most_likely"}
    assert {"accuracy", "nll", "brier", "ece", "query_time_s", "update_time_s"} <= set(df.columns)
    proc = subprocess.run([sys.executable, "-m", "bayesal", "plot", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "results.accuracy.png").stat().st_size > 1000
    for strat in ("random", "margin", "seq-margin@most_likely"):
        assert strat in proc.stdout


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["run", "--dataset", "nope", "--strategy", "random"]) == 2
    assert "unknown dataset" in capsys.readouterr().err
    assert main(["run", "--dataset", "digits", "--strategy", "frobnicate", "--cycles", "1"]) == 2
    assert "unknown strategy" in capsys.readouterr().err
    bad = tmp_path / "bad.parquet"
    bad.write_text("garbage")
    assert main(["plot", str(bad)]) == 2
    assert "could not read" in capsys.readouterr().err
    assert main(["run", "--dataset", "digits", "--strategy", "random", "--batch-size", "400", "--cycles", "10",
                 "--candidate-size", "0"]) == 2
    assert "exceeds the pool" in capsys.readouterr().err


@pytest.mark.parametrize("spec", ["random", "badge", "seq-margin", "seq-entropy@expected", "lookahead", "least-confidence"])
def test_strategy_specs(spec, tmp_path, monkeypatch):
    built = []

    def recording_make_strategy(*args, **kwargs):
        built.append(make_strategy(*args, **kwargs))
        return built[-1]

    monkeypatch.setattr(loop, "make_strategy", recording_make_strategy)
    out = tmp_path / "r.csv"
    assert main(["run", "--dataset", "digits", "--strategy", spec, "--batch-size", "5", "--cycles", "1", "--seeds", "1",
                 "--epochs", "10", "--candidate-size", "50", "--no-progress", "--out", str(out)]) == 0
    assert built and all(isinstance(s, OracleStrategy if spec == "seq-margin" else QueryStrategy) for s in built)
    df = pd.read_csv(out)
    assert set(df.strategy) == {spec} and list(df.num_labels) == [5, 10]


def test_cli_rejects_bad_arguments_before_compute(tmp_path, capsys, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("computed before validating the arguments")

    monkeypatch.setattr(loop, "run_active_learning", boom)
    base = ["run", "--dataset", "digits", "--strategy", "random", "--cycles", "1", "--no-progress"]
    assert main(base + ["--seeds", "0", "--out", str(tmp_path / "r.parquet")]) == 2
    out = capsys.readouterr()
    assert "--seeds must be >= 1" in out.err and "wrote" not in out.out
    assert main(base + ["--out", str(tmp_path / "r.json")]) == 2
    assert "parquet or .csv" in capsys.readouterr().err
    assert main(base + ["--initial-size", "0"]) == 2
    assert "--initial-size must be >= 1" in capsys.readouterr().err
    assert not (tmp_path / "r.parquet").exists()
    from bayesal.cli import commands as cli_mod

    monkeypatch.setattr(cli_mod, "_load", boom)  # a typo must not cost loading (or featurising) data
    assert main(["run", "--dataset", "bbcnews", "--strategy", "margn", "--no-progress"]) == 2
    assert "unknown strategy 'margn'" in capsys.readouterr().err

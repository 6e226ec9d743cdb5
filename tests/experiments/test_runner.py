"""The AL loop, results files and plots on small real data (scikit-learn's bundled digits)."""

import pandas as pd
import pytest
import torch

from bayesal.data import load_dataset
from bayesal.exceptions import InvalidInputError, ResultsFileError
from bayesal.experiments import runner as loop
from bayesal.experiments.plotting import aulc_table, curve_summary, plot_learning_curves
from bayesal.experiments.runner import (
    RESULT_COLUMNS,
    ALConfig,
    append_results,
    read_results,
    run_active_learning,
    run_experiment,
)
from bayesal.laplace import HeadConfig, PosteriorOptions
from bayesal.strategies import RandomSampling, make_strategy
from bayesal.strategies.base import QueryResult, QueryStrategy


class FirstK(QueryStrategy):
    """Deterministic stand-in: the first b candidates."""

    name = "firstk"

    def query(self, posterior, candidates, labeled, batch_size, generator):
        return QueryResult(torch.arange(batch_size), torch.zeros(batch_size))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


CFG = ALConfig(batch_size=5, cycles=3, candidate_size=100, posterior=PosteriorOptions(head=HeadConfig(epochs=200)))


def test_loop_protocol(digits):
    rows = run_active_learning(digits, FirstK(), CFG, seed=0)
    assert [r["cycle"] for r in rows] == [0, 1, 2, 3]
    assert [r["num_labels"] for r in rows] == [5, 10, 15, 20]
    for r in rows[1:]:
        assert 0 <= r["accuracy"] <= 1 and r["nll"] > 0 and 0 <= r["ece"] <= 1
        assert r["query_time_s"] >= 0 and r["update_time_s"] >= 0 and r["train_time_s"] > 0
        assert 0 <= r["accuracy_updated"] <= 1
    assert rows[-1]["accuracy"] > 0.3  # 20 labels on digits beat chance (0.1) clearly
    again = run_active_learning(digits, FirstK(), CFG, seed=0)
    assert [r["accuracy"] for r in again] == [r["accuracy"] for r in rows]  # seeded → identical


def test_loop_rejects_budget_larger_than_pool(digits):
    with pytest.raises(InvalidInputError, match="exceeds the pool"):
        run_active_learning(digits, FirstK(), ALConfig(batch_size=500, cycles=5), seed=0)
    with pytest.raises(InvalidInputError, match="candidate_size"):
        ALConfig(batch_size=50, candidate_size=10)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_results_append_and_read(tmp_path, suffix):
    path = tmp_path / f"r{suffix}"
    append_results([{"strategy": "a", "seed": 0, "num_labels": 5, "accuracy": 0.5}], path)
    append_results([{"strategy": "a", "seed": 1, "num_labels": 5, "accuracy": 0.7}], path)
    df = read_results(path)
    assert len(df) == 2 and list(df.seed) == [0, 1]


def test_corrupt_results_file(tmp_path):
    bad = tmp_path / "r.parquet"
    bad.write_bytes(b"not a parquet file")
    with pytest.raises(ResultsFileError, match="could not read"):
        read_results(bad)
    with pytest.raises(ResultsFileError, match="parquet or .csv"):
        append_results([{"a": 1}], tmp_path / "r.txt")


def _fake_results():
    rows = []
    for strat, level in (("good", 0.8), ("bad", 0.4)):
        for seed in range(3):
            for n in (10, 20, 30):
                rows.append({"dataset": "d", "strategy": strat, "seed": seed, "num_labels": n,
                             "accuracy": level + 0.01 * seed})
    return pd.DataFrame(rows)


def test_summary_and_aulc_table(tmp_path):
    df = _fake_results()
    summ = curve_summary(df)
    good = summ[(summ.strategy == "good") & (summ.num_labels == 10)].iloc[0]
    assert good["mean"] == pytest.approx(0.81) and good["count"] == 3
    assert good["sem"] == pytest.approx(0.01 / 3**0.5)
    tab = aulc_table(df)
    assert list(tab.strategy) == ["good", "bad"]
    assert tab.loc[0, "aulc_accuracy"] == pytest.approx(0.81)
    png = plot_learning_curves(df, tmp_path / "c.png")
    assert png.stat().st_size > 1000
    with pytest.raises(ResultsFileError, match="lack column"):
        curve_summary(df.drop(columns="seed"))


class Recorder(QueryStrategy):
    """Wraps a strategy and records what the loop hands it at each query."""

    def __init__(self, inner: QueryStrategy) -> None:
        self.inner, self.name, self.calls = inner, f"rec-{inner.name}", []

    def query(self, posterior, candidates, labeled, batch_size, generator):
        self.calls.append((candidates.clone(), labeled.features.clone()))
        return self.inner.query(posterior, candidates, labeled, batch_size, generator)


class NoisyFirstK(FirstK):
    """Picks like FirstK but draws from its generator, as randomised strategies do."""

    def query(self, posterior, candidates, labeled, batch_size, generator):
        torch.rand(1000, generator=generator)
        return super().query(posterior, candidates, labeled, batch_size, generator)


def test_strategies_with_one_seed_are_paired(digits):
    """Initial labels, per-cycle candidate subsets and head training do not depend on how much
    randomness a strategy draws, so strategies are compared on the same draws."""
    cfg = ALConfig(batch_size=5, cycles=3, candidate_size=100, posterior=PosteriorOptions(head=HeadConfig(epochs=20)))
    a, b, r = Recorder(FirstK()), Recorder(NoisyFirstK()), Recorder(RandomSampling())
    rows_a = run_active_learning(digits, a, cfg, seed=3)
    rows_b = run_active_learning(digits, b, cfg, seed=3)
    run_active_learning(digits, r, cfg, seed=3)
    assert torch.equal(a.calls[0][1], r.calls[0][1])  # same initial labeled set
    assert torch.equal(a.calls[0][0], r.calls[0][0])  # same first candidates
    for k in range(3):
        assert torch.equal(a.calls[k][0], b.calls[k][0]), f"candidate subsets differ in cycle {k + 1}"
    assert [x["accuracy"] for x in rows_a] == [x["accuracy"] for x in rows_b]  # same head training
    # Different picks: cycle-3 candidates differ by at most the items labeled by one run only (2 x 10).
    rows = lambda t: {tuple(v) for v in t.tolist()}  # noqa: E731
    assert len(rows(a.calls[2][0]) & rows(r.calls[2][0])) >= 100 - 2 * 10


def test_initial_size_is_validated(digits):
    for bad in (0, -3):
        with pytest.raises(InvalidInputError, match="initial_size must be >= 1"):
            ALConfig(initial_size=bad)
    assert ALConfig(batch_size=7).initial == 7 and ALConfig(initial_size=2).initial == 2
    rows = run_active_learning(digits, FirstK(), ALConfig(batch_size=5, cycles=1, initial_size=2,
                                                          posterior=PosteriorOptions(head=HeadConfig(epochs=5))), seed=0)
    assert [r["num_labels"] for r in rows] == [2, 7]
    with pytest.raises(InvalidInputError, match="1790 initial .* exceeds the pool"):
        run_active_learning(digits, FirstK(), ALConfig(batch_size=5, cycles=2, initial_size=1790), seed=0)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_append_rejects_other_columns(tmp_path, suffix):
    path = tmp_path / f"r{suffix}"
    append_results([{"strategy": "a", "seed": 0, "num_labels": 5, "accuracy": 0.5}], path)
    before = path.read_bytes()
    with pytest.raises(ResultsFileError, match=r"expected columns .*'nll'\], found .*'accuracy'\] \(the file lacks \['nll'\] and has extra \['accuracy'\]"):
        append_results([{"strategy": "a", "seed": 1, "num_labels": 5, "nll": 0.7}], path)
    assert path.read_bytes() == before  # untouched
    append_results([{"accuracy": 0.7, "strategy": "a", "seed": 1, "num_labels": 5}], path)  # order is fine
    assert list(read_results(path).accuracy) == [0.5, 0.7]


def test_run_experiment_checks_out_before_compute(digits, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("computed before validating the output")

    monkeypatch.setattr(loop, "run_active_learning", boom)
    cfg = ALConfig(batch_size=5, cycles=1, candidate_size=100)
    with pytest.raises(ResultsFileError, match="parquet or .csv"):
        run_experiment(digits, ["random"], cfg, [0], out=tmp_path / "x.json", progress=False)
    corrupt = tmp_path / "c.parquet"
    corrupt.write_bytes(b"not parquet")
    with pytest.raises(ResultsFileError, match="could not read"):
        run_experiment(digits, ["random"], cfg, [0], out=corrupt, progress=False)
    other = tmp_path / "o.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(ResultsFileError, match="different schema"):
        run_experiment(digits, ["random"], cfg, [0], out=other, progress=False)
    assert other.read_text() == "a,b\n1,2\n" and corrupt.read_bytes() == b"not parquet"
    with pytest.raises(InvalidInputError, match="exceeds the pool"):
        run_experiment(digits, ["random"], ALConfig(batch_size=500, cycles=5), [0], progress=False)
    with pytest.raises(InvalidInputError, match="at least one"):
        run_experiment(digits, ["random"], cfg, [], progress=False)


def test_run_experiment_batch_sizes_stay_apart(digits, tmp_path):
    out = tmp_path / "r.csv"
    for b in (5, 10):
        cfg = ALConfig(batch_size=b, cycles=1, candidate_size=100, posterior=PosteriorOptions(head=HeadConfig(epochs=5)))
        run_experiment(digits, ["random"], cfg, [0, 1], out=out, progress=False)
    df = read_results(out)
    assert list(df.columns) == list(RESULT_COLUMNS) and len(df) == 2 * 2 * 2
    tab = aulc_table(df)
    assert sorted(tab.batch_size) == [5, 10] and list(tab.seeds) == [2, 2]
    assert "setting" not in tab.columns  # configs differ only in the batch size, shown already


def test_rerun_resumes_instead_of_duplicating(digits, tmp_path):
    out = tmp_path / "r.parquet"
    cfg = ALConfig(batch_size=5, cycles=1, candidate_size=100, posterior=PosteriorOptions(head=HeadConfig(epochs=5)))
    first = run_experiment(digits, ["random"], cfg, [0], out=out, progress=False)
    calls = []
    real = loop.run_active_learning
    loop.run_active_learning = lambda *a, **k: calls.append(a[3]) or real(*a, **k)
    try:
        again = run_experiment(digits, ["random"], cfg, [0, 1], out=out, progress=False)
    finally:
        loop.run_active_learning = real
    assert calls == [1] and again.attrs["skipped_runs"] == 1  # seed 0 was complete: not rerun
    df = read_results(out)
    assert len(df) == 2 * 2 and sorted(df.seed.unique()) == [0, 1]
    pd.testing.assert_frame_equal(again[again.seed == 0].reset_index(drop=True), first, check_dtype=False)
    doubled = pd.concat([df, df[df.seed == 0]], ignore_index=True)  # e.g. a file appended twice by hand
    assert list(aulc_table(doubled).seeds) == [2]
    assert curve_summary(doubled)["count"].max() == 2


def test_summary_keeps_batch_sizes_and_configs_apart(tmp_path):
    df = _fake_results().assign(batch_size=10, config=str({"batch_size": 10, "head": {"epochs": 200}}))
    assert "batch_size" not in aulc_table(df).columns  # one batch size: the table stays as it was
    other_b = df.assign(batch_size=20, config=str({"batch_size": 20, "head": {"epochs": 200}}), accuracy=0.1)
    both = pd.concat([df, other_b], ignore_index=True)
    tab = aulc_table(both)
    assert len(tab) == 4 and list(tab.seeds) == [3] * 4
    good = tab[tab.strategy == "good"].set_index("batch_size")["aulc_accuracy"]
    assert good[10] == pytest.approx(0.81) and good[20] == pytest.approx(0.1)
    assert len(curve_summary(both)) == 2 * len(curve_summary(df))
    other_cfg = df.assign(config=str({"batch_size": 10, "head": {"epochs": 50}}), accuracy=0.2)
    tab = aulc_table(pd.concat([df, other_cfg], ignore_index=True))
    assert sorted(tab.setting.unique()) == ["head.epochs=200", "head.epochs=50"] and len(tab) == 4
    png = plot_learning_curves(both, tmp_path / "b.png")
    assert png.stat().st_size > 1000


def test_unknown_strategy_lists_cli_specs():
    for spec in ("frobnicate", "seq-frobnicate"):
        with pytest.raises(InvalidInputError, match="unknown strategy") as err:
            make_strategy(spec)
        msg = str(err.value)
        for part in ("least-confidence", "seq-NAME[@oracle|most_likely|sampled|expected]", "lookahead",
                     "oracle-lookahead"):
            assert part in msg
        assert "expected_log_loss_reduction" not in msg and "sequential" not in msg

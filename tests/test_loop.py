"""The AL loop, results files and plots on small real data (scikit-learn's bundled digits)."""

import pandas as pd
import pytest
import torch

from bayesal.data import load_dataset
from bayesal.head import HeadConfig
from bayesal.loop import ALConfig, append_results, read_results, run_active_learning
from bayesal.plotting import aulc_table, curve_summary, plot_learning_curves
from bayesal.strategies.base import QueryResult, QueryStrategy


class FirstK(QueryStrategy):
    """Deterministic stand-in: the first b candidates."""

    name = "firstk"

    def query(self, posterior, candidates, labeled, batch_size, generator, candidate_labels=None):
        return QueryResult(torch.arange(batch_size), torch.zeros(batch_size))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


CFG = ALConfig(batch_size=5, cycles=3, candidate_size=100, head=HeadConfig(epochs=200))


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
    with pytest.raises(ValueError, match="exceeds the pool"):
        run_active_learning(digits, FirstK(), ALConfig(batch_size=500, cycles=5), seed=0)
    with pytest.raises(ValueError, match="candidate_size"):
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
    with pytest.raises(ValueError, match="could not read"):
        read_results(bad)
    with pytest.raises(ValueError, match="parquet or .csv"):
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
    with pytest.raises(ValueError, match="lack column"):
        curve_summary(df.drop(columns="seed"))

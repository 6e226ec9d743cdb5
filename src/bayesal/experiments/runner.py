"""The active-learning loop of the paper's protocol (docs/method.md §6) and the multi-seed experiment runner."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from bayesal.data import Dataset
from bayesal.exceptions import InvalidInputError
from bayesal.laplace import DEFAULT_LAMBDA_MF, Hessian, LastLayerLaplace, PosteriorOptions, PriorSelection
from bayesal.strategies import LabeledSet, Strategy, make_strategy, select
from bayesal.utils import derive_generator

from .metrics import decision_flips, evaluate
from .results import (
    RESULT_COLUMNS,
    _read_existing,
    append_results,
    check_csv_is_results,
    check_results_frame,
    check_results_path,
    data_fingerprint,
    read_results,
)

__all__ = [
    "ALConfig", "RESULT_COLUMNS", "check_run_request", "run_active_learning", "run_experiment",
    "append_results", "read_results",
]
# (RESULT_COLUMNS, append_results and read_results live in .results; re-exported for existing imports)



@dataclass(frozen=True)
class ALConfig:
    """Protocol settings; defaults follow the paper (b random initial labels, 20 cycles, 1000 random
    candidates per query, head retrained from scratch after each cycle).

    ``posterior`` sets up the posterior of every cycle: λ₀, the update (every update and every strategy
    simulating one uses its step size and steps), the mean-field scale and how the head is fitted. The
    default :class:`~bayesal.laplace.settings.PosteriorOptions` is the library's (categorical curvature,
    γ = 1, 5 damped Newton steps: the update that tracks the exact retrain; λ₀ chosen by
    cross-validation at every fit; the exact MAP head); ``posterior=PosteriorOptions.paper()`` is the
    paper's protocol (γ = 10, gaussian curvature, one step, λ₀ = 1, 200 epochs of RAdam).
    """

    batch_size: int = 10
    cycles: int = 20
    initial_size: int | None = None  # None: batch_size
    candidate_size: int | None = 1000  # None: the whole unlabeled pool
    posterior: PosteriorOptions = field(default_factory=PosteriorOptions)

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.cycles < 0:
            raise InvalidInputError(f"batch_size must be >= 1 and cycles >= 0, got {self.batch_size}, {self.cycles}")
        if self.initial_size is not None and self.initial_size < 1:
            raise InvalidInputError(f"initial_size must be >= 1 (or None for batch_size), got {self.initial_size}")
        if self.candidate_size is not None and self.candidate_size < self.batch_size:
            raise InvalidInputError(f"candidate_size {self.candidate_size} is smaller than batch_size {self.batch_size}")
        if not isinstance(self.posterior, PosteriorOptions):
            raise InvalidInputError(f"posterior must be a PosteriorOptions, got {type(self.posterior).__name__}")

    def record(self) -> dict[str, Any]:
        """The settings as plain values, in the layout of the results' ``config`` column.

        The posterior's options are flat next to the protocol's, ``None`` standing for the default λ₀
        (cross-validation) and mean-field scale, and ``hessian`` only when not the shared one: the
        layout results files have always had, so that a rerun finds the runs they hold.
        """
        opts = self.posterior.to_dict()
        out = {
            "batch_size": self.batch_size, "cycles": self.cycles, "initial_size": self.initial_size,
            "candidate_size": self.candidate_size, "gamma": opts["gamma"],
            "prior_precision": None if opts["prior_precision"] == PriorSelection.CV else opts["prior_precision"],
            "lambda_mf": None if opts["lambda_mf"] == DEFAULT_LAMBDA_MF else opts["lambda_mf"],
            "steps": opts["steps"], "curvature": opts["curvature"], "head": opts["head"],
            # runs from before the predictive's spread was chosen have no such key: rerun, not resumed
            "spread": opts["spread"], "exact_until": opts["exact_until"],
            # ... and so do runs from before "cv" chose the likelihood's temperature with the spread
            "temperature": "cv" if opts["spread"] == "cv" else 1.0,
        }
        if self.posterior.hessian is not Hessian.SHARED:
            out["hessian"] = opts["hessian"]
        return out

    @property
    def initial(self) -> int:
        """Number of initial random labels."""
        return self.batch_size if self.initial_size is None else self.initial_size

    def check_budget(self, pool_size: int) -> None:
        """Raise if the pool is empty or the label budget exceeds it."""
        if pool_size == 0:
            raise InvalidInputError("the pool is empty")
        budget = self.initial + self.cycles * self.batch_size
        if budget > pool_size:
            raise InvalidInputError(
                f"budget of {self.initial} initial + {self.cycles} cycles x {self.batch_size} = {budget} labels "
                f"exceeds the pool of {pool_size} instances; lower --initial-size, --cycles or --batch-size"
            )


def _fit_posterior(x: torch.Tensor, y: torch.Tensor, c: int, cfg: ALConfig, gen: torch.Generator) -> tuple[LastLayerLaplace, float]:
    """λ₀ (if chosen from the data), the head and the posterior, all by the posterior's own fit, so the
    head is the MAP of the objective the posterior describes."""
    t0 = time.perf_counter()
    post = cfg.posterior.posterior(random_state=gen).fit(x, y, num_classes=c)
    return post, time.perf_counter() - t0


def run_active_learning(
    dataset: Dataset,
    strategy: Strategy | str,
    config: ALConfig = ALConfig(),
    seed: int = 0,
    on_cycle: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """One seed of the AL protocol; returns one row per cycle (cycle 0 = the initial random labels).

    Each row: strategy, seed, cycle, num_labels, accuracy, nll, brier, ece (on the test split, after
    retraining), accuracy_updated (after the fast Bayesian update, before retraining), decision
    flips caused by retraining, query_time_s, update_time_s, train_time_s.

    ``strategy`` is a spec for :func:`~bayesal.strategies.make_strategy` (oracle specs get the test
    split as their held-out reference set and the pool's true labels) or a strategy object.
    """
    x_pool = torch.as_tensor(dataset.train_features, dtype=torch.float64)
    y_pool = torch.as_tensor(dataset.train_labels).long()
    x_test = torch.as_tensor(dataset.test_features, dtype=torch.float64)
    y_test = torch.as_tensor(dataset.test_labels).long()
    c = dataset.num_classes
    n_pool = len(y_pool)
    config.check_budget(n_pool)
    name = strategy if isinstance(strategy, str) else getattr(strategy, "name", type(strategy).__name__)
    if isinstance(strategy, str):
        strategy = make_strategy(strategy, held_out=(x_test, y_test))
    # One stream per purpose and cycle, so that for a given seed every strategy sees the same initial
    # labels, candidate subsets and head-training order: the comparison between strategies is paired.
    labeled = torch.randperm(n_pool, generator=derive_generator(seed, "initial"))[: config.initial]
    is_labeled = torch.zeros(n_pool, dtype=torch.bool)
    is_labeled[labeled] = True
    post, train_time = _fit_posterior(x_pool[labeled], y_pool[labeled], c, config, derive_generator(seed, "head", 0))
    rows: list[dict[str, Any]] = []

    def record(cycle: int, query_time: float, update_time: float, acc_updated: float, flips: float) -> None:
        row = {"strategy": name, "seed": seed, "cycle": cycle, "num_labels": int(is_labeled.sum()),
               **evaluate(probs_test, y_test), "accuracy_updated": acc_updated, "decision_flips": flips,
               "query_time_s": query_time, "update_time_s": update_time, "train_time_s": train_time}
        rows.append(row)
        if on_cycle is not None:
            on_cycle(row)

    probs_test = post.predict_proba(x_test)
    record(0, float("nan"), float("nan"), float("nan"), float("nan"))
    for cycle in range(1, config.cycles + 1):
        # one candidate stream per cycle, separate from the strategy's: strategies with the same labels
        # get the same candidates, others share all but their picks
        t0 = time.perf_counter()
        picked = select(
            strategy, post, x_pool, ~is_labeled, LabeledSet(x_pool[is_labeled], y_pool[is_labeled]),
            config.batch_size, derive_generator(seed, "strategy", cycle), candidate_size=config.candidate_size,
            candidate_generator=derive_generator(seed, "candidates", cycle), pool_labels=y_pool,
        )
        query_time = time.perf_counter() - t0
        t0 = time.perf_counter()
        updated = post.update(x_pool[picked], y_pool[picked])
        update_time = time.perf_counter() - t0
        acc_updated = evaluate(updated.predict_proba(x_test), y_test)["accuracy"]
        is_labeled[picked] = True
        before = probs_test
        post, train_time = _fit_posterior(x_pool[is_labeled], y_pool[is_labeled], c, config,
                                          derive_generator(seed, "head", cycle))
        probs_test = post.predict_proba(x_test)
        record(cycle, query_time, update_time, acc_updated, decision_flips(before, probs_test))
    return rows


def check_run_request(strategies: list[str], out: str | Path | None) -> pd.DataFrame | None:
    """Check strategy specs and the results file (suffix, a writable location, readability, columns and
    types) without any data, so the CLI can refuse a typo or an unwritable ``--out`` before loading (and
    maybe featurising) a dataset. Returns the rows already in ``out`` (None if it is absent or empty)."""
    if not strategies:
        raise InvalidInputError("need at least one strategy")
    dummy = (torch.zeros(1, 1), torch.zeros(1, dtype=torch.long))
    for s in strategies:
        make_strategy(s, held_out=dummy)
    if out is None:
        return None
    out = check_results_path(out)
    if out.suffix == ".csv":
        check_csv_is_results(out)  # a foreign file is refused before any compute, and left untouched
    old = _read_existing(out)
    if old is not None:
        check_results_frame(old, out)
    return old


def run_experiment(
    dataset: Dataset,
    strategies: list[str],
    config: ALConfig,
    seeds: Iterable[int],
    out: str | Path | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Run every strategy for every seed; rows are appended to ``out`` after each (strategy, seed)
    so an interrupted run keeps what it finished. Returns all rows.

    Strategies, seeds, the label budget and ``out`` (suffix, readability, columns) are checked before
    any compute, so a typo cannot cost a finished run. A (strategy, seed) already complete in ``out``
    for the same dataset and config is not run again (its rows are returned as they are): rerunning an
    interrupted command resumes it instead of duplicating rows. The dataset is identified by a
    fingerprint of its content (:func:`~bayesal.experiments.results.data_fingerprint`), so changed data
    under the same name is run afresh. ``df.attrs["skipped_runs"]`` counts the kept runs.
    """
    from tqdm.auto import tqdm

    seeds = list(seeds)
    if not seeds:
        raise InvalidInputError("need at least one seed")
    old = check_run_request(strategies, out)
    config.check_budget(len(dataset.train_labels))
    out = None if out is None else Path(out)
    cfg_str = str(config.record())
    fingerprint = data_fingerprint(dataset)
    done: dict[tuple[str, int], pd.DataFrame] = {}
    if old is not None:
        mine = old[(old["data_fingerprint"].astype(str) == fingerprint) & (old["config"].astype(str) == cfg_str)]
        for (strat, seed), part in mine.groupby(["strategy", "seed"]):
            if part["cycle"].nunique() == config.cycles + 1:  # complete: every cycle is there
                done[(str(strat), int(seed))] = part.drop_duplicates("cycle", keep="last")
    total = len(strategies) * len(seeds) * (config.cycles + 1)
    bar = tqdm(total=total, desc=f"{dataset.name}", disable=not progress, unit="cycle")
    frames = []
    skipped = 0
    for strat in strategies:
        for seed in seeds:
            if (strat, int(seed)) in done:
                frames.append(done[(strat, int(seed))])
                skipped += 1
                bar.update(config.cycles + 1)
                continue

            def tick(row: dict[str, Any]) -> None:
                bar.set_postfix(strategy=row["strategy"], seed=row["seed"], labels=row["num_labels"],
                                acc=f"{row['accuracy']:.3f}")
                bar.update(1)

            rows = run_active_learning(dataset, strat, config, seed, on_cycle=tick)
            rows = [{**r, "dataset": dataset.name, "data_fingerprint": fingerprint,
                     "batch_size": config.batch_size, "config": cfg_str} for r in rows]
            if out is not None:
                append_results(rows, out)
            frames.append(pd.DataFrame(rows))
    bar.close()
    df = pd.concat(frames, ignore_index=True)
    df.attrs["skipped_runs"] = skipped
    return df

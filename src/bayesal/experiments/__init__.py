"""Simulated active learning: the protocol, the runner, its results file, metrics and plots."""

from .plotting import aulc_table, plot_learning_curves
from .runner import ALConfig, check_run_request, read_results, run_experiment

__all__ = [
    "ALConfig",
    "aulc_table",
    "check_run_request",
    "plot_learning_curves",
    "read_results",
    "run_experiment",
]

"""Simulated active learning: the protocol, the runner, its results file, metrics and plots."""

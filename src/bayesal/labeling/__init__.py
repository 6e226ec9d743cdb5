"""Labeling by a person: a crash-safe :class:`Session` over a label log, its history and recovery."""

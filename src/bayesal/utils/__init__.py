"""Helpers every layer may use: input validation, random streams and atomic file writes."""

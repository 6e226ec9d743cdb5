"""Waiting for a condition in a browser page without eval (the app's Content-Security-Policy forbids it)."""

from __future__ import annotations

import time


def wait_until(page, js: str, arg=None, timeout_ms: int = 30_000) -> None:
    """Poll ``js`` (an expression, or a function of ``arg``) in ``page`` until it is truthy.

    Playwright's ``wait_for_function`` polls a string predicate with ``eval`` inside the page, which the
    app's Content-Security-Policy (no 'unsafe-eval') refuses whenever the first check is not already
    true; ``page.evaluate`` goes through the DevTools protocol, which the policy does not govern."""
    deadline = time.monotonic() + timeout_ms / 1000
    while not (page.evaluate(js) if arg is None else page.evaluate(js, arg)):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {js!r} ({arg!r})")
        page.wait_for_timeout(20)

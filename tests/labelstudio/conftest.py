"""Fixtures of the Label Studio backend tests: recorded Label Studio request bodies and a backend."""

from __future__ import annotations

import copy
import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest

FIXTURES = Path(__file__).with_name("fixtures")


def _load_harness():
    spec = importlib.util.spec_from_file_location("bayesal_ls_harness", Path(__file__).with_name("harness.py"))
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


@pytest.fixture(scope="session")
def harness():
    return _load_harness()


@pytest.fixture(scope="session")
def recorded():
    """``recorded(name)``: a fresh copy of the body Label Studio 1.23.2 sent (fixtures/<name>.json)."""
    cache: dict[str, Any] = {}

    def load(name: str) -> Any:
        if name not in cache:
            cache[name] = json.loads((FIXTURES / f"{name}.json").read_text())["body"]
        return copy.deepcopy(cache[name])

    return load


@pytest.fixture(scope="session")
def minilm():
    """The MiniLM text backbone (loaded once per test session)."""
    pytest.importorskip("sentence_transformers", reason="the text extras (MiniLM) are not installed")
    from bayesal.data.backbones import get_backbone

    bb = get_backbone("minilm", max_seq_length=128)
    _ = bb.model  # load now, not inside the first test that encodes
    return bb

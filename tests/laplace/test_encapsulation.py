"""Nothing outside ``bayesal.laplace`` touches the posterior's private or fitted (trailing-underscore) members."""

import ast
from pathlib import Path

import torch

import bayesal
from bayesal import LastLayerLaplace

SRC = Path(bayesal.__file__).parent


def _posterior_internals() -> set[str]:
    """Private methods/attributes and fitted ``name_`` attributes of a fitted posterior."""
    x = torch.randn(6, 3, dtype=torch.float64)
    post = LastLayerLaplace().fit(x, torch.arange(6) % 2, weight=torch.zeros(2, 3, dtype=torch.float64))
    names = set(vars(post)) | {n for n in dir(type(post)) if not n.startswith("__")}
    return {n for n in names if (n.startswith("_") or n.endswith("_")) and not n.startswith("__")}


def _offences(tree: ast.AST, internals: set[str]) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or node.attr not in internals:
            continue
        owner = node.value
        if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
            continue  # a class's own private members
        out.append((node.lineno, node.attr))
    return out


def test_internals_list_is_meaningful():
    internals = _posterior_internals()
    assert {"mean_", "covariance_", "num_classes_", "_logits", "_features", "_chunks", "_point_probs"} <= internals


def test_no_posterior_internals_outside_laplace():
    internals = _posterior_internals()
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if rel.parts[0] == "laplace":
            continue
        for line, name in _offences(ast.parse(path.read_text(encoding="utf-8")), internals):
            found.append(f"{rel}:{line}: .{name}")
    assert not found, "posterior internals used outside bayesal.laplace (use its public API):\n" + "\n".join(found)


def test_detector_flags_private_access():
    code = "def f(post, s):\n    post.mean_ = 1\n    s._x = post._logits(s)\n    return self._chunks\n"
    names = [n for _, n in _offences(ast.parse(code), {"mean_", "_logits", "_x", "_chunks"})]
    assert sorted(names) == ["_logits", "_x", "mean_"]

"""Error policy: bayesal raises its own typed errors (``bayesal.exceptions``), never a bare built-in.

Every module under ``src/bayesal`` is parsed, and each ``raise`` of a built-in exception class, or
each built-in exception made to be raised elsewhere (``return ImportError(...)`` in a helper), is reported
as ``file:line``. Re-raising (``raise``, ``raise err``) and raising a bayesal error are fine.
"""

from __future__ import annotations

import ast
import builtins
from pathlib import Path

import pytest

import bayesal
from bayesal import exceptions

PACKAGE = Path(bayesal.__file__).resolve().parent

BUILTIN_EXCEPTIONS = frozenset(
    name for name, obj in vars(builtins).items() if isinstance(obj, type) and issubclass(obj, BaseException)
)

# (module path relative to the package, exception name) -> why a built-in is right there
ALLOWED = {
    ("laplace/head.py", "StopIteration"): "SciPy's minimize stops early when its callback raises StopIteration",
    ("serve/__init__.py", "AttributeError"): "a module __getattr__ must raise AttributeError for unknown names",
}
# Anywhere: the protocol of abstract methods, not an error a caller handles.
ALLOWED_EVERYWHERE = {"NotImplementedError"}


def _class_name(target: ast.expr) -> str | None:
    """``Name`` for ``Name`` or ``builtins.Name``, else None."""
    if isinstance(target, ast.Name):
        return target.id
    if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "builtins":
        return target.attr
    return None


def _made_name(node: ast.AST) -> str | None:
    """The class raised by ``raise Name`` or made by a call ``Name(...)`` (which covers ``raise Name(...)``)."""
    if isinstance(node, ast.Raise) and node.exc is not None and not isinstance(node.exc, ast.Call):
        return _class_name(node.exc)
    if isinstance(node, ast.Call):
        return _class_name(node.func)
    return None


def builtin_raises(root: Path) -> list[tuple[str, int, str]]:
    """``(relative path, line, exception name)`` of every built-in exception raised or made under ``root``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        shadowed = {  # a module may define or import its own class of a built-in's name
            alias.asname or alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom)
            for alias in node.names
        } | {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
        for node in ast.walk(tree):
            name = _made_name(node)
            if name in BUILTIN_EXCEPTIONS and name not in shadowed:
                found.append((rel, node.lineno, name))
    return sorted(found)


def test_no_builtin_exception_is_raised_in_bayesal() -> None:
    bad = [
        f"src/bayesal/{rel}:{line}: raise {name}"
        for rel, line, name in builtin_raises(PACKAGE)
        if name not in ALLOWED_EVERYWHERE and (rel, name) not in ALLOWED
    ]
    assert not bad, "raise a typed error from bayesal.exceptions instead of a built-in:\n" + "\n".join(bad)


def test_allow_list_has_no_stale_entries() -> None:
    used = {(rel, name) for rel, _, name in builtin_raises(PACKAGE)}
    stale = sorted(set(ALLOWED) - used)
    assert not stale, f"allow-list entries that no longer match a raise: {stale}"


def test_the_scan_finds_builtin_raises(tmp_path: Path) -> None:
    (tmp_path / "mod.py").write_text(
        "import builtins\n"
        "from bayesal.exceptions import InvalidInputError\n"
        "def f(x):\n"
        "    if x:\n"
        "        raise ValueError('bad')\n"
        "    if x is None:\n"
        "        raise builtins.KeyError\n"
        "    try:\n"
        "        pass\n"
        "    except OSError as err:\n"
        "        raise InvalidInputError('typed') from err\n"
        "    except TypeError:\n"
        "        raise\n"
        "def missing(name):\n"
        "    return ImportError(name)\n"
        "def ok(err):\n"
        "    return isinstance(err, ValueError)\n"
    )
    assert builtin_raises(tmp_path) == [("mod.py", 5, "ValueError"), ("mod.py", 7, "KeyError"),
                                        ("mod.py", 15, "ImportError")]


@pytest.mark.parametrize("name", exceptions.__all__)
def test_every_error_is_a_bayesal_error_and_a_builtin(name: str) -> None:
    cls = getattr(exceptions, name)
    assert issubclass(cls, exceptions.BayesalError)
    if cls is not exceptions.BayesalError:  # each also derives from the built-in a caller would catch
        assert any(base.__module__ == "builtins" and base is not Exception for base in cls.__mro__[1:-2])

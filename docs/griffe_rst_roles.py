"""Griffe extension for the API reference: the docstrings' reStructuredText roles as Markdown code.

Docstrings cite objects as ``:class:`~bayesal.laplace.LastLayerLaplace``` (Sphinx style); mkdocstrings
renders Markdown, where the role would show as text. The role becomes a code span of the name
(the last dotted part for ``~``). Loaded by mkdocs.yml; reads sources only, imports nothing.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|data|mod|exc|obj|const):`(~?)([^`]+)`")


def _code(match: re.Match[str]) -> str:
    short, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


class RstRoles(griffe.Extension):
    """Rewrite the roles of every docstring as it is loaded."""

    def on_instance(self, *, obj: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_code, obj.docstring.value)

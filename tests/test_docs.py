"""The README stays a newcomer's page whose links lead into docs/, and the docs cover every command.

The site itself (links and anchors between pages, the API reference) is checked by ``make docs``
(``mkdocs build --strict``), which ``make test`` runs first.
"""

import argparse
import re
from pathlib import Path

import pytest

from bayesal.cli.commands import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
#: ``[text](target)`` links of Markdown, without images' ``!`` distinction (both must resolve).
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _relative_links(text: str) -> list[str]:
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


def test_readme_links_resolve_to_files():
    links = _relative_links(README.read_text(encoding="utf-8"))
    assert any(t.startswith("docs/") for t in links), "the README should point into docs/"
    missing = [t for t in links if not (ROOT / t.split("#")[0]).is_file()]
    assert missing == [], f"README links to missing files: {missing}"


def test_readme_keeps_the_two_set_up_commands():
    text = README.read_text(encoding="utf-8")
    setup = text.split("## Set-up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^(make \w+)", setup.split("```bash", 1)[1].split("```", 1)[0], flags=re.M)
    assert commands == ["make demo", "make test"]


def _subcommands() -> list[str]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sorted(sub.choices)


@pytest.mark.parametrize("page", [README, DOCS / "cli.md"])
def test_every_command_is_documented(page):
    text = page.read_text(encoding="utf-8")
    commands = _subcommands()
    assert {"run", "plot", "datasets", "demo", "label"} <= set(commands)
    assert [c for c in commands if f"bayesal {c}" not in text] == []


def test_every_docs_page_is_in_the_site_navigation():
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert pages, "docs/ has no pages"
    assert [p for p in pages if p not in nav] == []

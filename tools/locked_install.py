#!/usr/bin/env python3
"""Install into a virtual environment from a constraints (lock) file, or freeze one into a lock file.

``install``: runs ``pip install -c LOCK ARGS...`` with the venv's own pip and keeps pip's output in a log
file. When pip fails, it prints one line that names the pinned package(s) pip could not install and the
lock file to update, instead of pip's resolver log (which stays in the log file).

``freeze``: writes ``pip freeze`` of a venv (editable installs left out) to a lock file, under a header
that says how it was made.

Standard library only: the Makefile runs it with the system Python, before any venv exists.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

_NAME = r"[A-Za-z0-9][A-Za-z0-9._-]*"
# pip's ways of saying that a pinned or requested version is not there (pip 23–26)
_CONSTRAINT = re.compile(rf"The user requested \(constraint\) ({_NAME})\s*(\S*)")
_NO_MATCH = re.compile(rf"No matching distribution found for ({_NAME})\s*(\S*)")
_NOT_FOUND = re.compile(rf"Could not find a version that satisfies the requirement ({_NAME})\s*(\S*)")


def canonical(name: str) -> str:
    """PEP 503 normalised project name (``Jinja2`` and ``jinja2`` are one package)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(lock: Path) -> dict[str, str]:
    """``{canonical name: 'name==version'}`` of a lock file's pins (comments and blank lines skipped)."""
    pins: dict[str, str] = {}
    for raw in lock.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        match = re.match(rf"({_NAME})\s*==\s*(\S+)", line)
        if match:
            pins[canonical(match.group(1))] = f"{match.group(1)}=={match.group(2)}"
    return pins


def diagnose(log: str, lock: Path) -> str:
    """One line naming what pip could not install and where its pin lives, from pip's output ``log``."""
    pins = read_pins(lock) if lock.exists() else {}
    culprits: list[str] = []
    for pattern in (_CONSTRAINT, _NO_MATCH, _NOT_FOUND):
        for name, spec in pattern.findall(log):
            key = canonical(name.split("[", 1)[0])
            label = pins.get(key) or f"{name}{spec}"
            if label not in culprits:
                culprits.append(label)
    if culprits:
        pinned = [c for c in culprits if canonical(c.split("=", 1)[0]) in pins]
        where = (f"update its pin in {lock} or regenerate the file with 'make lock'" if pinned
                 else f"it is not pinned in {lock}: add it there or regenerate the file with 'make lock'")
        return f"cannot install {', '.join(culprits)} (not on the package index, or its pins conflict); {where}"
    errors = [ln.strip() for ln in log.splitlines() if ln.lstrip().startswith(("ERROR:", "error:"))]
    last = errors[-1] if errors else (log.strip().splitlines() or ["pip failed without output"])[-1].strip()
    return f"pip could not install from {lock}: {last}"


def install(python: str, lock: Path, log_path: Path, args: list[str]) -> int:
    """Run the venv's pip with the lock as constraints; on failure print :func:`diagnose`'s line."""
    if not lock.is_file():
        print(f"error: lock file {lock} is missing; run 'make lock' to create it", file=sys.stderr)
        return 1
    cmd = [python, "-m", "pip", "install", "--disable-pip-version-check", "-c", str(lock), *args]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    with log_path.open("a", encoding="utf-8") as fh:
        fh.write(f"$ {' '.join(cmd)}\n{proc.stdout}\n")
    if proc.returncode != 0:
        print(f"error: {diagnose(proc.stdout, lock)} (pip's full output: {log_path})", file=sys.stderr)
    return proc.returncode


def freeze(python: str, lock: Path, header: str) -> int:
    """Write ``pip freeze`` of the venv of ``python`` to ``lock`` with ``header`` as comment lines."""
    proc = subprocess.run([python, "-m", "pip", "freeze", "--exclude-editable"], stdout=subprocess.PIPE,
                          text=True, check=True)
    lines = sorted((ln for ln in proc.stdout.splitlines() if ln and not ln.startswith("#")), key=str.lower)
    comment = "".join(f"# {ln}\n" if ln else "#\n" for ln in header.splitlines())
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.write_text(comment + "\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines)} pins to {lock}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help="pip install ARGS with LOCK as constraints")
    inst.add_argument("--python", required=True, help="the venv's python")
    inst.add_argument("--lock", required=True, type=Path)
    inst.add_argument("--log", required=True, type=Path, help="file that receives pip's output")
    inst.add_argument("pip_args", nargs=argparse.REMAINDER, help="after --: arguments of pip install")
    frz = sub.add_parser("freeze", help="write the venv's packages to LOCK")
    frz.add_argument("--python", required=True)
    frz.add_argument("--lock", required=True, type=Path)
    frz.add_argument("--header", action="append", default=[], help="a comment line at the top (repeatable)")
    ns = parser.parse_args(argv)
    if ns.command == "install":
        args = ns.pip_args[1:] if ns.pip_args[:1] == ["--"] else ns.pip_args
        return install(ns.python, ns.lock, ns.log, args)
    return freeze(ns.python, ns.lock, "\n".join(ns.header))


if __name__ == "__main__":
    sys.exit(main())

"""Automatic set-up for a repository that brings no set-up script, as Codex does: the obvious steps for
the files at its root.

- ``pyproject.toml`` / ``setup.py`` / ``setup.cfg``: a venv outside the workspace (``/opt/overnight/venv``,
  with the image's system packages visible, pytest among them), the project installed editable with its
  test extras when it declares some (``test``, ``tests``, ``testing``; else ``dev``), then the requirements
  of its PEP 735 dependency group of the same names (``[dependency-groups]``, includes resolved);
- ``requirements*.txt``: installed into that venv;
- ``package.json``: ``npm ci`` with a ``package-lock.json``, ``yarn install --frozen-lockfile`` /
  ``pnpm install --frozen-lockfile`` with theirs (when the tool is in the image), else ``npm install``.

The venv's ``bin`` is first on the agent's PATH. A failed automatic set-up is reported, not fatal.
"""

from __future__ import annotations

import configparser
import shlex
import tomllib
from collections.abc import Callable

VENV = "/opt/overnight/venv"
TEST_EXTRAS = ("test", "tests", "testing")
FALLBACK_EXTRAS = ("dev",)
"""Taken only when no test extra or group is declared: a ``dev`` set usually holds the test runner."""
Reader = Callable[[str], bytes | None]


def _test_extras(read: Reader) -> list[str]:
    """Names of the optional-dependency groups that hold test requirements."""
    declared: set[str] = set()
    pyproject = read("pyproject.toml")
    if pyproject is not None:
        try:
            project = tomllib.loads(pyproject.decode("utf-8", errors="replace")).get("project", {})
            declared |= set((project.get("optional-dependencies") or {}).keys())
        except tomllib.TOMLDecodeError:
            pass
    setup_cfg = read("setup.cfg")
    if setup_cfg is not None:
        parser = configparser.ConfigParser()
        try:
            parser.read_string(setup_cfg.decode("utf-8", errors="replace"))
            if parser.has_section("options.extras_require"):
                declared |= set(parser.options("options.extras_require"))
        except configparser.Error:
            pass
    return _chosen(declared)


def _chosen(declared: set[str]) -> list[str]:
    tests = [name for name in TEST_EXTRAS if name in declared]
    return tests or [name for name in FALLBACK_EXTRAS if name in declared]


def _group_requirements(read: Reader) -> list[str]:
    """The requirement strings of the PEP 735 dependency groups that hold test requirements."""
    pyproject = read("pyproject.toml")
    if pyproject is None:
        return []
    try:
        groups = tomllib.loads(pyproject.decode("utf-8", errors="replace")).get("dependency-groups") or {}
    except tomllib.TOMLDecodeError:
        return []
    if not isinstance(groups, dict):
        return []
    requirements: list[str] = []

    def collect(name: str, seen: frozenset[str]) -> None:
        if name in seen:  # a cycle: PEP 735 calls it an error; take what was gathered
            return
        for entry in groups.get(name) or []:
            if isinstance(entry, str) and entry not in requirements:
                requirements.append(entry)
            elif isinstance(entry, dict) and isinstance(entry.get("include-group"), str):
                collect(entry["include-group"], seen | {name})

    for name in _chosen(set(groups)):
        collect(name, frozenset())
    return requirements


def auto_setup_script(read: Reader, requirements: list[str]) -> str | None:
    """The set-up script for what the repository's root holds, or None when nothing is recognised.

    ``read(name)`` returns a root file's bytes (or None); ``requirements`` lists the root's
    ``requirements*.txt`` files.
    """
    steps: list[str] = []
    python_project = any(read(name) is not None for name in ("pyproject.toml", "setup.py", "setup.cfg"))
    if python_project or requirements:
        steps += [f"python3 -m venv --system-site-packages {VENV}", f". {VENV}/bin/activate"]
        for requirement in sorted(requirements):
            steps.append(f"pip install --progress-bar off -r {shlex.quote(requirement)}")
        if python_project:
            extras = _test_extras(read)
            target = f".[{','.join(extras)}]" if extras else "."
            steps.append(f"pip install --progress-bar off -e '{target}'")
            if grouped := _group_requirements(read):
                steps.append("pip install --progress-bar off " + " ".join(shlex.quote(r) for r in grouped))
    if read("package.json") is not None:
        if read("package-lock.json") is not None or read("npm-shrinkwrap.json") is not None:
            steps.append("npm ci --no-audit --no-fund")
        elif read("yarn.lock") is not None:
            steps.append("if command -v yarn >/dev/null; then yarn install --frozen-lockfile; "
                         "else npm install --no-audit --no-fund; fi")  # fmt: skip
        elif read("pnpm-lock.yaml") is not None:
            steps.append("if command -v pnpm >/dev/null; then pnpm install --frozen-lockfile; "
                         "else npm install --no-audit --no-fund; fi")  # fmt: skip
        else:
            steps.append("npm install --no-audit --no-fund")
    if not steps:
        return None
    lines = ["# automatic set-up (the repository has no .overnight/setup.sh)", "set -ex", *steps]
    return "\n".join(lines) + "\n"

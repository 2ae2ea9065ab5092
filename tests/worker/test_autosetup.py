"""What the automatic set-up runs for what a repository's root holds."""

from __future__ import annotations

import shlex

import pytest

from worker.autosetup import VENV, auto_setup_script


def script_for(files: dict[str, str], requirements: list[str] | None = None) -> str | None:
    return auto_setup_script(lambda name: files[name].encode() if name in files else None, requirements or [])


def test_nothing_recognised_means_no_setup() -> None:
    assert script_for({"README.md": "hi"}) is None


def test_python_project_gets_a_venv_and_an_editable_install_with_test_extras() -> None:
    pyproject = '[project]\nname = "x"\n[project.optional-dependencies]\ntests = ["pytest"]\ndocs = ["sphinx"]\n'
    script = script_for({"pyproject.toml": pyproject}, ["requirements-dev.txt"])
    assert script is not None
    lines = script.splitlines()
    assert lines[1:] == [
        "set -ex",
        f"python3 -m venv --system-site-packages {VENV}",
        f". {VENV}/bin/activate",
        "pip install --progress-bar off -r requirements-dev.txt",
        "pip install --progress-bar off -e '.[tests]'",
    ]


@pytest.mark.parametrize(
    ("files", "install"),
    [
        ({"setup.py": "from setuptools import setup; setup()"}, "-e '.'"),
        ({"setup.cfg": "[options.extras_require]\ntesting = pytest\n"}, "-e '.[testing]'"),
        ({"pyproject.toml": "not [valid toml"}, "-e '.'"),
    ],
)
def test_extras_come_from_pyproject_or_setup_cfg(files: dict[str, str], install: str) -> None:
    script = script_for(files)
    assert script is not None and script.splitlines()[-1] == f"pip install --progress-bar off {install}"


def test_requirements_alone_are_installed_into_the_venv() -> None:
    script = script_for({}, ["requirements.txt", "requirements-test.txt"])
    assert script is not None
    assert (
        "-r requirements-test.txt" in script
        and "-r requirements.txt" in script
        and "install --progress-bar off -e" not in script
    )


@pytest.mark.parametrize(
    ("lockfile", "command"),
    [
        ("package-lock.json", "npm ci --no-audit --no-fund"),
        ("yarn.lock", "yarn install --frozen-lockfile"),
        ("pnpm-lock.yaml", "pnpm install --frozen-lockfile"),
        (None, "npm install --no-audit --no-fund"),
    ],
)
def test_node_projects_install_by_their_lockfile(lockfile: str | None, command: str) -> None:
    files = {"package.json": "{}"} | ({lockfile: ""} if lockfile else {})
    script = script_for(files)
    assert script is not None and command in script.splitlines()[-1]


@pytest.mark.parametrize("name", ["requirements dev.txt", "requirements; rm -rf ~.txt", "requirements$(id).txt",
                                  "requirements'x'.txt", "requirements\nx.txt"])  # fmt: skip
def test_odd_requirement_file_names_are_quoted_as_one_word(name: str) -> None:
    script = script_for({}, [name])
    assert script is not None
    command = script.split("\n", 4)[4].removesuffix("\n")  # after the comment, set -ex, venv, activate
    assert shlex.split(command) == ["pip", "install", "--progress-bar", "off", "-r", name]


def test_dev_extras_when_no_test_extras_and_dependency_groups_with_includes() -> None:
    pyproject = (
        '[project]\nname = "x"\n[project.optional-dependencies]\ndev = ["ruff"]\ndocs = ["sphinx"]\n'
        "[dependency-groups]\n"
        'test = ["pytest>=8", {include-group = "typing"}, "hypothesis; python_version >= \'3.10\'"]\n'
        'typing = ["mypy", {include-group = "test"}]\nlint = ["ruff"]\n'
    )
    script = script_for({"pyproject.toml": pyproject})
    assert script is not None
    lines = script.splitlines()
    assert lines[-2] == "pip install --progress-bar off -e '.[dev]'"
    assert lines[-1] == ("pip install --progress-bar off 'pytest>=8' mypy "
                         "'hypothesis; python_version >= '\"'\"'3.10'\"'\"''")  # fmt: skip
    only_dev_group = '[project]\nname = "x"\n[dependency-groups]\ndev = ["pytest"]\n'
    assert script_for({"pyproject.toml": only_dev_group}).splitlines()[-1] == "pip install --progress-bar off pytest"  # type: ignore[union-attr]

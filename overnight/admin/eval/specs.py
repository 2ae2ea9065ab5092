"""An instance's set-up, as SWE-bench's harness specifies it per repository and version (its
``MAP_REPO_VERSION_TO_SPECS``: ``packages``, ``pip_packages``, ``pre_install``, ``install``, ``eval_commands``,
``test_cmd``), turned into the set-up script a task runs.

SWE-bench builds an environment image per repository and version — the dependencies, with the requirements file
read *at the instance's* ``environment_setup_commit`` — then an instance image: the repository at ``base_commit``
with ``pre_install`` and ``install`` run in it. The script here does the same in Overnight's set-up sandbox: the
dependency stage in a temporary worktree of ``environment_setup_commit`` (the base commit when there is none), so
it reads that commit's requirements and leaves the workspace untouched, then the install stage in the workspace at
the base commit. Both install into the venv the agent's and the grading sandbox's PATH start with."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sandbox.runtime import WORKDIR
from worker.autosetup import VENV

COMMIT = re.compile(r"^[0-9a-f]{4,64}$")
ENV_CHECKOUT = "/tmp/overnight-env-commit"
FILTERED = ".overnight-requirements.txt"
SKIPPED_REQUIREMENTS = r"/^[[:space:]]*(-e[[:space:]]+\.|\.\[test|#)/d"
"""SWE-bench leaves these lines out of a requirements file: the project itself (installed by ``install``)."""
CONDA_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)=([^=<>!].*)$")


class SpecError(ValueError):
    """A spec or a specs file that cannot be used; the message says where and why."""


class InstanceSpec(BaseModel):
    """The set-up of an instance, in the shape of one entry of SWE-bench's ``MAP_REPO_VERSION_TO_SPECS`` (keys it
    has that Overnight does not use, such as ``nano_cpus``, are ignored)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    python: str | None = None
    """Recorded, not honoured: the sandbox image has one Python (3.11); SWE-bench makes a conda env of this one."""
    packages: str | None = None
    """``requirements.txt``: the requirements file at the environment commit (``reqs_path``), installed;
    ``environment.yml``: a conda environment, which the image cannot make (skipped, with a line in the set-up log);
    else packages to install, as shell words (``name=1.2`` conda pins become ``name==1.2``)."""
    reqs_path: list[str] = Field(default_factory=lambda: ["requirements.txt"])
    """Overnight's (SWE-bench keeps these in ``MAP_REPO_TO_REQS_PATHS``): where the requirements file may be; the
    first that exists at the environment commit is taken."""
    pip_packages: list[str] = Field(default_factory=list)
    """Installed after ``packages``; shell text, as SWE-bench's harness joins them into its pip command."""
    pre_install: list[str] = Field(default_factory=list)
    """Commands run in the workspace at the base commit before ``install``, in one shell (an assignment holds for
    the next), as the sandbox's user: one that fails (SWE-bench's ``apt-get`` lines need root) is reported in the
    set-up's log and the set-up goes on."""
    install: str | None = None
    eval_commands: list[str] = Field(default_factory=list)
    """Commands the grading runs in the tests' shell, before the test command."""
    test_cmd: str | list[str] | None = None
    """Used when the instance names no ``test_cmd``; the test patch's files are appended to it."""

    @field_validator("pre_install", "pip_packages", "eval_commands", "reqs_path", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @property
    def has_setup(self) -> bool:
        return bool(self.packages or self.pip_packages or self.pre_install or self.install)

    def test_command(self) -> str | None:
        if not self.test_cmd:
            return None
        command = self.test_cmd if isinstance(self.test_cmd, str) else " && ".join(self.test_cmd)
        return command if "{test_files}" in command else f"{command} {{test_files}}"


def load_specs(path: Path) -> dict[str, dict[str, InstanceSpec]]:
    """A specs file: ``{"OWNER/NAME": {"VERSION": spec}}``, the shape of SWE-bench's ``MAP_REPO_VERSION_TO_SPECS``
    (``json.dumps`` of it reads as it is)."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise SpecError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise SpecError(f"{path}: not JSON: {exc}") from exc
    if not isinstance(data, dict) or not all(isinstance(versions, dict) for versions in data.values()):
        raise SpecError(f'{path}: expected {{"OWNER/NAME": {{"VERSION": {{...}}}}}}')
    specs: dict[str, dict[str, InstanceSpec]] = {}
    for repo, versions in data.items():
        for version, spec in versions.items():
            try:
                specs.setdefault(repo, {})[str(version)] = InstanceSpec.model_validate(spec)
            except ValidationError as exc:
                problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in exc.errors())
                raise SpecError(f"{path}: {repo} {version}: {problems}") from exc
    return specs


def _pip(words: str) -> str:
    """``words`` is shell text, as SWE-bench's harness passes its packages to conda and pip."""
    return f"pip install --progress-bar off {words}"


def _packages_step(spec: InstanceSpec) -> list[str]:
    if spec.packages is None or not spec.packages.strip():
        return []
    if spec.packages == "requirements.txt":
        paths = " ".join(shlex.quote(path) for path in spec.reqs_path)
        missing = shlex.quote(f"overnight eval: no requirements file at the environment commit (looked for "
                              f"{' '.join(spec.reqs_path)})")  # fmt: skip
        return [f"""found=
for file in {paths}; do
  if [ -f "$file" ]; then
    found=$file; sed -E {shlex.quote(SKIPPED_REQUIREMENTS)} "$file" > "$(dirname "$file")/{FILTERED}"
    pip install --progress-bar off -r "$(dirname "$file")/{FILTERED}"; break
  fi
done
[ -n "$found" ] || {{ echo {missing} >&2; exit 1; }}"""]  # fmt: skip
    if spec.packages == "environment.yml":
        return ["echo 'overnight eval: packages=environment.yml needs conda, which the sandbox image lacks: skipped'"]
    try:
        words = shlex.split(spec.packages)
    except ValueError as exc:
        raise SpecError(f"packages {spec.packages[:80]!r}: {exc}") from exc
    return [_pip(" ".join(shlex.quote(CONDA_PIN.sub(r"\1==\2", word)) for word in words))]


def _shown(text: str) -> str:
    return re.sub(r"[^\w.+-]", "?", text)[:40]


def setup_commands(spec: InstanceSpec, *, environment_commit: str | None) -> str:
    """The set-up of one instance (bash, ``set -e``): the venv, the dependency stage in a worktree of
    ``environment_commit`` (HEAD when None), then ``pre_install`` and ``install`` in the workspace."""
    lines = [f"python3 -m venv --system-site-packages {VENV}", f". {VENV}/bin/activate"]
    dependencies = _packages_step(spec) + ([_pip(" ".join(spec.pip_packages))] if spec.pip_packages else [])
    if spec.python:
        lines.append(
            f"echo 'overnight eval: the spec names Python {_shown(spec.python)}; the image has' \"$(python3 -V)\""
        )
    if dependencies:
        commit = environment_commit or "HEAD"
        lines += [
            f"# dependencies, as of the environment commit {commit}",
            f"rm -rf {ENV_CHECKOUT}",
            f"git worktree add --quiet --detach {ENV_CHECKOUT} {commit} || {{ echo 'overnight eval: the "
            f"environment_setup_commit {commit} is not in the repository' >&2; exit 1; }}",
            f"cd {ENV_CHECKOUT}", *dependencies, f"cd {WORKDIR}",
            f"git worktree remove --force {ENV_CHECKOUT}", "git worktree prune",
        ]  # fmt: skip
    if spec.pre_install or spec.install:
        lines.append("# the instance, at its base commit")
    for command in spec.pre_install:
        lines.append(f'{{ {command}\n}} || echo "overnight eval: a pre_install command failed (exit $?); going on" >&2')
    if spec.install:
        lines.append(spec.install)
    return "\n".join(lines)

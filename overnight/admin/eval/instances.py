"""Instances in SWE-bench's format, where their repositories come from, and what the agent is asked."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DEFAULT_TEST_CMD = "python -m pytest -rA -p no:cacheprovider {test_files}"
DEFAULT_REPO_URL = "https://github.com/{repo}.git"
INSTRUCTION = """Resolve the issue below in this repository: change its source so that the issue is fixed. \
The maintainers' tests, which may not be in the repository yet, will be run on your change.

<issue>
{problem_statement}
</issue>"""


class InstanceError(ValueError):
    """An instances file, or a repository source, that cannot be used; the message says which line and why."""


class Instance(BaseModel):
    """One SWE-bench instance (the fields the harness and this command read; others are ignored), plus three
    optional fields of Overnight's own for instances that are not Python projects graded with pytest."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    instance_id: str = Field(min_length=1, max_length=200)
    repo: str = Field(min_length=1, description="owner/name, as SWE-bench names it (django/django).")
    base_commit: str = Field(min_length=4, max_length=64)
    problem_statement: str = Field(min_length=1)
    test_patch: str = ""
    fail_to_pass: list[str] = Field(alias="FAIL_TO_PASS", default_factory=list)
    pass_to_pass: list[str] = Field(alias="PASS_TO_PASS", default_factory=list)
    patch: str = ""
    """The gold patch (SWE-bench's field); not used in grading, only kept."""
    version: str | None = None
    environment_setup_commit: str | None = None
    """Recorded only: the set-up runs on the base commit's tree (the environment is keyed by that tree)."""
    test_cmd: str | None = None
    """Overnight's: the command that runs the tests in the sandbox; ``{test_files}`` becomes the files the test
    patch touches, shell-quoted (default: pytest with ``-rA`` on them)."""
    test_format: Literal["pytest", "tap"] = "pytest"
    """Overnight's: how the command's output says which test passed (pytest's ``-rA`` lines, or TAP)."""
    setup: str | None = None
    """Overnight's: a set-up script in the repository for the task (as ``overnight submit --setup``)."""

    @field_validator("fail_to_pass", "pass_to_pass", mode="before")
    @classmethod
    def _json_list(cls, value: Any) -> Any:
        """The published data sets carry these lists as JSON text."""
        return json.loads(value) if isinstance(value, str) else value

    @property
    def instruction(self) -> str:
        return INSTRUCTION.format(problem_statement=self.problem_statement.strip())

    def test_command(self) -> str:
        files = " ".join(shlex.quote(path) for path in patch_files(self.test_patch).touched)
        return (self.test_cmd or DEFAULT_TEST_CMD).replace("{test_files}", files).strip()


class PatchFiles(BaseModel):
    model_config = ConfigDict(frozen=True)

    modified: list[str]
    """Files the patch changes or deletes (they exist before it)."""
    created: list[str]

    @property
    def touched(self) -> list[str]:
        return [*self.modified, *self.created]


def patch_files(diff: str) -> PatchFiles:
    """The files a unified diff touches, from its ``---``/``+++`` lines."""
    modified: list[str] = []
    created: list[str] = []
    old: str | None = None
    for line in diff.splitlines():
        if line.startswith("--- "):
            old = line[4:].split("\t")[0].strip()
        elif line.startswith("+++ ") and old is not None:
            new = line[4:].split("\t")[0].strip()
            if old == "/dev/null":
                created.append(new.removeprefix("b/"))
            else:
                modified.append(old.removeprefix("a/"))
            old = None
    return PatchFiles(modified=list(dict.fromkeys(modified)), created=list(dict.fromkeys(created)))


def load_instances(path: Path) -> list[Instance]:
    """The instances of a JSONL file (one object a line), or of a JSON file holding a list of them."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise InstanceError(f"cannot read {path}: {exc.strerror or exc}") from exc
    stripped = text.lstrip()
    rows: list[tuple[int, Any]]
    try:
        if stripped.startswith("["):
            rows = list(enumerate(json.loads(text), 1))
        else:
            rows = [(number, json.loads(line)) for number, line in enumerate(text.splitlines(), 1) if line.strip()]
    except json.JSONDecodeError as exc:
        raise InstanceError(f"{path}: not JSON lines: {exc}") from exc
    instances = []
    for number, row in rows:
        try:
            instances.append(Instance.model_validate(row))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'row'}: {e['msg']}" for e in exc.errors())
            raise InstanceError(f"{path}: instance {number}: {problems}") from exc
    seen: set[str] = set()
    for instance in instances:
        if instance.instance_id in seen:
            raise InstanceError(f"{path}: instance {instance.instance_id} appears twice")
        seen.add(instance.instance_id)
    if not instances:
        raise InstanceError(f"{path}: no instances")
    return instances


class RepoSource(BaseModel):
    """Where the tasks clone each instance's repository from: a folder of local mirrors, or a URL template."""

    model_config = ConfigDict(frozen=True)

    mirrors: Path | None = None
    """A folder holding OWNER__NAME, OWNER/NAME or NAME git repositories (bare or not)."""
    url: str = DEFAULT_REPO_URL
    """With no mirrors: ``{repo}`` becomes OWNER/NAME."""

    def locate(self, repo: str) -> str:
        if self.mirrors is None:
            return self.url.replace("{repo}", repo)
        owner, _, name = repo.rpartition("/")
        candidates = [f"{owner}__{name}", repo, name] if owner else [name]
        for candidate in candidates:
            folder = (self.mirrors / candidate).resolve()
            if folder.is_dir() and folder.is_relative_to(self.mirrors.resolve()):
                return str(folder)
        tried = ", ".join(candidates)
        raise InstanceError(f"no mirror of {repo} in {self.mirrors} (looked for {tried})")

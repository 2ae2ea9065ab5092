"""Instances in SWE-bench's format, where their repositories come from, and what the agent is asked."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from overnight.admin.eval.specs import COMMIT, InstanceSpec

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
    """One SWE-bench instance (the fields the harness and this command read; others are ignored), plus optional
    fields of Overnight's own: how its tests run and are read, and its set-up."""

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
    """With a ``spec``: the commit its dependency stage reads (SWE-bench's environment image); else recorded only."""
    test_cmd: str | None = None
    """Overnight's: the command that runs the tests in the sandbox; ``{test_files}`` becomes the files the test
    patch touches, shell-quoted (default: pytest with ``-rA`` on them)."""
    test_format: Literal["pytest", "tap"] = "pytest"
    """Overnight's: how the command's output says which test passed (pytest's ``-rA`` lines, or TAP)."""
    setup: str | None = None
    """Overnight's: a set-up script in the repository for the task (as ``overnight submit --setup``)."""
    spec: InstanceSpec | None = None
    """Overnight's: the instance's set-up in SWE-bench's spec shape (else the one ``--specs`` gives its repository
    and version)."""

    @field_validator("fail_to_pass", "pass_to_pass", mode="before")
    @classmethod
    def _json_list(cls, value: Any) -> Any:
        """The published data sets carry these lists as JSON text."""
        return json.loads(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _usable_setup(self) -> Instance:
        if self.spec is None:
            return self
        if self.setup:
            raise ValueError("an instance has a set-up script (setup) or a spec, not both")
        for name in ("base_commit", "environment_setup_commit"):
            value = getattr(self, name)
            if value is not None and not COMMIT.match(value):
                raise ValueError(f"{name} must be a commit id (hex) for an instance with a set-up, not {value[:70]!r}")
        return self

    @property
    def instruction(self) -> str:
        return INSTRUCTION.format(problem_statement=self.problem_statement.strip())

    def test_command(self) -> str:
        files = " ".join(shlex.quote(path) for path in patch_files(self.test_patch).touched)
        command = self.test_cmd or (self.spec.test_command() if self.spec else None) or DEFAULT_TEST_CMD
        return command.replace("{test_files}", files).strip()

    @property
    def eval_commands(self) -> list[str]:
        """Run in the tests' shell before the test command (the spec's ``eval_commands``)."""
        return list(self.spec.eval_commands) if self.spec else []


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


def with_specs(instances: list[Instance], specs: dict[str, dict[str, InstanceSpec]]) -> list[Instance]:
    """Each instance without a ``spec`` of its own given the one of its repository and version (SWE-bench's
    harness looks its specs up the same way); an instance of a repository the file has, at a version it has not,
    is refused."""
    given = []
    for instance in instances:
        versions = specs.get(instance.repo)
        if instance.spec is not None or versions is None:
            given.append(instance)
            continue
        spec = versions.get(instance.version or "")
        if spec is None:
            raise InstanceError(f"{instance.instance_id}: the specs have {instance.repo} but not its version "
                                f"{instance.version!r} (they have {', '.join(sorted(versions)[:8])})")  # fmt: skip
        try:
            given.append(Instance.model_validate({**instance.model_dump(by_alias=True), "spec": spec.model_dump()}))
        except ValidationError as exc:
            raise InstanceError(f"{instance.instance_id}: {exc.errors()[0]['msg']}") from exc
    return given


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

"""Grading one task's patch as SWE-bench's harness does, inside a sandbox: a fresh checkout of the task's base
commit, started from the environment its set-up made (the same cache key: a hit), then the patch, then the test
patch (the agent's edits to the files it touches discarded first), then the named tests. The repository, the
patch and the tests are hostile input: git, the patch and the tests run only in the sandbox, with the limits and
isolation of a task's; what crosses back is the test command's status lines and the tail of its log."""

from __future__ import annotations

import secrets
import shlex
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from overnight.access import RepoAccess, Requester
from overnight.admin.eval.instances import Instance, patch_files
from overnight.admin.eval.testlogs import PARSERS, PASSING, STATUS_LINES
from overnight.settings import Settings
from sandbox.base import Sandbox, SandboxBackend, SandboxError, SandboxSpec
from sandbox.environments import EnvironmentCache
from sandbox.reaper import mark_owned, remove_owned
from worker.environment import SetupPolicy, enter_environment, prepare_environment
from worker.errors import TaskFailure
from worker.mirrors import MirrorCache
from worker.repo import Checkout, clone_repository
from worker.sandboxes import sandbox_backend, setup_policy
from worker.task_environment import TaskEnvironment

FOLDER = "/tmp/overnight-eval"
APPLY = f"""git apply --verbose {FOLDER}/model.patch 2>&1 ||
{{ git checkout -q -- . && git clean -fdq && patch --batch --forward --fuzz=5 -p1 -i {FOLDER}/model.patch; }} 2>&1"""
"""SWE-bench's order: git apply, then GNU patch with some fuzz."""
STATUS_OUTPUT_LIMIT = 8 * 2**20
LOG_TAIL = 20_000
NAMES_SHOWN = 3


class Grade(BaseModel):
    """What grading found. ``error``: it could not judge (the environment, the test patch, the sandbox)."""

    model_config = ConfigDict(frozen=True)

    outcome: Literal["resolved", "unresolved", "error"]
    reason: str | None = None
    """One line: why not resolved (None when resolved)."""
    fail_to_pass: tuple[int, int] = (0, 0)
    """Named FAIL_TO_PASS tests that passed, of how many."""
    pass_to_pass: tuple[int, int] = (0, 0)
    tests: dict[str, str] = Field(default_factory=dict)
    """The status of each named test (MISSING: the output did not name it)."""
    seconds: float = 0.0
    log: str = Field(default="", exclude=True)
    """The tail of the test command's output (written beside the report, not into it)."""


@dataclass(kw_only=True)
class Grader:
    backend: SandboxBackend
    environments: EnvironmentCache
    policy: SetupPolicy
    checkout: Checkout
    workspaces: Path
    git_memory: int
    test_timeout: float

    @classmethod
    def from_settings(cls, settings: Settings, *, test_timeout: float) -> Grader:
        """The worker's own backend, environment cache, set-up policy and mirrors: on a worker host, grading
        finds the environment the task's set-up left."""
        backend = sandbox_backend(settings)
        sandbox, worker = settings.sandbox, settings.worker
        return cls(
            backend=backend,
            environments=EnvironmentCache(settings.environments_dir, backend, max_age=sandbox.env_max_age_hours * 3600,
                                          max_bytes=sandbox.env_max_bytes),
            policy=setup_policy(sandbox, lifetime=worker.task_time_limit),
            checkout=Checkout(
                mirrors=MirrorCache(settings.mirrors_dir, max_bytes=worker.mirror_max_bytes),
                access=RepoAccess.from_settings(settings),
                credentials={host: token.get_secret_value() for host, token in settings.git_credentials.items()},
            ),
            workspaces=settings.workspaces_dir,
            git_memory=worker.git_memory_limit,
            test_timeout=test_timeout,
        )  # fmt: skip

    def grade(self, instance: Instance, *, repo: str, base_sha: str, setup: str | None, owner: Requester,
              user_id: int, diff: str, task_env: TaskEnvironment | None = None) -> Grade:  # fmt: skip
        """Grade ``diff`` (the task's patch, maybe empty) against ``instance`` at ``base_sha`` of ``repo`` (the
        task's repository, as the task names it: the environment's cache key holds it). ``task_env``: the task's
        environment (its script and variables are the set-up's; its variables are the tests' too)."""
        started = time.monotonic()
        name = f"eval-{secrets.token_hex(6)}"
        workspace = self.workspaces / name
        mark_owned(workspace)
        try:
            self.backend.create_workspace(workspace)
            with ExitStack() as lease:
                clone_repository(repo, base_sha, workspace, checkout=self.checkout, owner=owner, lease=lease)
            environment = prepare_environment(
                task_id=name, repository=repo, workspace=workspace, setup_path=setup, backend=self.backend,
                cache=self.environments, policy=self.policy, emit=lambda event: None, owner=str(user_id),
                git_memory=self.git_memory, task_env=task_env,
            )  # fmt: skip
            box = self.backend.start(SandboxSpec(task_id=name, workspace=workspace, image=environment.ref,
                                                 lifetime=self.test_timeout + 900,
                                                 env=task_env.variables if task_env else {}))  # fmt: skip
            try:
                enter_environment(box, environment.ref)
                grade = self._grade_in(box, instance, diff)
            finally:
                box.close()
        except (TaskFailure, SandboxError) as exc:
            grade = Grade(outcome="error", reason=f"grading: {exc}")
        finally:
            remove_owned(workspace)
        return grade.model_copy(update={"seconds": round(time.monotonic() - started, 2)})

    def _grade_in(self, box: Sandbox, instance: Instance, diff: str) -> Grade:
        box.run(f"mkdir -p {FOLDER}", timeout=60)
        box.write_file(f"{FOLDER}/model.patch", diff.encode())
        box.write_file(f"{FOLDER}/test.patch", instance.test_patch.encode())
        if diff.strip():
            applied = box.run(APPLY, timeout=300)
            if applied.exit_code != 0:
                return Grade(outcome="unresolved", reason=f"the patch does not apply: {_last_line(applied.stdout)}",
                             fail_to_pass=(0, len(instance.fail_to_pass)),
                             pass_to_pass=(0, len(instance.pass_to_pass)))  # fmt: skip
        if instance.test_patch.strip():
            touched = patch_files(instance.test_patch)
            reset = [f"git checkout -q HEAD -- {_quoted(touched.modified)}" if touched.modified else "",
                     f"rm -rf -- {_quoted(touched.created)}" if touched.created else ""]  # fmt: skip
            prepared = box.run("\n".join([*filter(None, reset), f"git apply --verbose {FOLDER}/test.patch 2>&1"]),
                               timeout=300)  # fmt: skip
            if prepared.exit_code != 0:
                return Grade(outcome="error", reason=f"the test patch does not apply: {_last_line(prepared.stdout)}")
        commands = "\n".join([*instance.eval_commands, instance.test_command()])
        ran = box.run(f"{{ {commands}\n}} > {FOLDER}/test.log 2>&1", timeout=self.test_timeout)
        pattern = shlex.quote(STATUS_LINES[instance.test_format])
        lines = box.run(f"grep -aE {pattern} {FOLDER}/test.log", timeout=120, output_limit=STATUS_OUTPUT_LIMIT)
        tail = box.run(f"tail -c {LOG_TAIL} {FOLDER}/test.log", timeout=60).stdout
        statuses = PARSERS[instance.test_format](lines.stdout)
        return judge(instance, statuses, diff=diff, timed_out=ran.timed_out, timeout=self.test_timeout, log=tail)


def judge(instance: Instance, statuses: dict[str, str], *, diff: str, timed_out: bool, timeout: float,
          log: str = "") -> Grade:  # fmt: skip
    """Resolved when every FAIL_TO_PASS test passes and every PASS_TO_PASS test still does."""
    named = dict.fromkeys([*instance.fail_to_pass, *instance.pass_to_pass], "MISSING")
    tests = {name: statuses.get(name, status) for name, status in named.items()}
    broken_f2p = [name for name in instance.fail_to_pass if tests[name] not in PASSING]
    broken_p2p = [name for name in instance.pass_to_pass if tests[name] not in PASSING]
    reasons = []
    if timed_out:
        reasons.append(f"the tests timed out after {timeout:g} s")
    if not diff.strip():
        reasons.append("empty patch")
    if broken_f2p:
        reasons.append(f"{len(broken_f2p)} of {len(instance.fail_to_pass)} FAIL_TO_PASS fail ({_names(broken_f2p)})")
    if broken_p2p:
        reasons.append(f"{len(broken_p2p)} of {len(instance.pass_to_pass)} PASS_TO_PASS broke ({_names(broken_p2p)})")
    resolved = not broken_f2p and not broken_p2p
    return Grade(
        outcome="resolved" if resolved else "unresolved",
        reason=None if resolved else "; ".join(reasons),
        fail_to_pass=(len(instance.fail_to_pass) - len(broken_f2p), len(instance.fail_to_pass)),
        pass_to_pass=(len(instance.pass_to_pass) - len(broken_p2p), len(instance.pass_to_pass)),
        tests=tests,
        log=log,
    )


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown + (f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")


def _quoted(paths: list[str]) -> str:
    return " ".join(shlex.quote(path) for path in paths)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "(no output)")[:200]

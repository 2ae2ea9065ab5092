"""Acceptance on real projects no one here wrote, from the package registries: the release becomes a git
repository, a small realistic bug is planted, and a task whose scripted model runs the project's own suite,
fixes the bug and runs the suite again must end with a patch that touches exactly the fixed file and that,
applied to a fresh checkout, makes the suite pass again — in a sandbox set up automatically (dependencies
fetched from the registries in the set-up phase, through this machine's TLS-intercepting proxy).

Downloaded artifacts are kept in ~/.cache/overnight-tests between runs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import Engine

from agent.scripted import ScriptedCall, ScriptedModelServer, ScriptedTurn
from sandbox.base import SandboxBackend, SandboxSpec
from sandbox.disk import remove_folder
from tests.conftest import SANDBOX_IMAGE, git
from tests.worker.conftest import make_context, outcome, submit
from worker.environment import SetupPolicy, enter_environment, prepare_environment
from worker.pipeline import run_task

ARTIFACTS = Path.home() / ".cache" / "overnight-tests" / "artifacts"
HOST_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


@dataclass(frozen=True, kw_only=True)
class Project:
    name: str
    fetch: list[str]
    """Command that downloads the release into the artifact folder (appended: the folder)."""
    artifact: str
    path: str
    """The file the bug is planted in (and the only file the patch may touch)."""
    correct: str
    buggy: str
    suite: str
    passed: str
    """Text the suite prints when it passes."""


PROJECTS = [
    Project(
        name="inflection",  # pure Python, a pytest suite
        fetch=[
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary=:all:",
            "inflection==0.5.1",
            "-d",
        ],
        artifact="inflection-0.5.1.tar.gz",
        path="inflection/__init__.py",
        correct='    word = word.replace("-", "_")\n    return word.lower()\n',
        buggy='    word = word.replace("-", "_")\n    return word\n',
        suite="python -m pytest -q -p no:cacheprovider test_inflection.py",
        passed=" passed",
    ),
    Project(
        name="humanize",  # tests need freezegun and pytest-cov: its `tests` extra, installed by the set-up
        fetch=[
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--no-binary=:all:",
            "humanize==4.12.3",
            "-d",
        ],
        artifact="humanize-4.12.3.tar.gz",
        path="src/humanize/number.py",
        correct="    if value % 100 in (11, 12, 13):  # special case\n",
        buggy="    if value % 100 in (11, 12):  # special case\n",
        suite="python -m pytest -q -p no:cacheprovider tests/test_number.py",
        passed=" passed",
    ),
    Project(
        name="through",  # JavaScript: `npm test` with the devDependencies the set-up installs
        fetch=["npm", "pack", "--silent", "through@2.3.8", "--pack-destination"],
        artifact="through-2.3.8.tgz",
        path="index.js",
        correct="    while(buffer.length && !stream.paused) {\n",
        buggy="    while(buffer.length && stream.paused) {\n",
        suite="npm test 2>&1 && echo SUITE-PASSED",
        passed="SUITE-PASSED",
    ),
]


def release_repository(project: Project, root: Path) -> Path:
    """The release unpacked into a git repository with the bug planted in a second commit."""
    artifact = ARTIFACTS / project.artifact
    if not artifact.exists():
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        subprocess.run([*project.fetch, str(ARTIFACTS)], check=True, capture_output=True, timeout=300)
    unpacked = root / "unpacked"
    with tarfile.open(artifact) as archive:
        archive.extractall(unpacked, filter="data")
    (top,) = list(unpacked.iterdir())
    repo = root / project.name
    shutil.move(top, repo)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"release {project.artifact}")
    source = repo / project.path
    text = source.read_text()
    assert text.count(project.correct) == 1, f"{project.name}: the line to break is not in {project.path}"
    source.write_text(text.replace(project.correct, project.buggy))
    git(repo, "commit", "-q", "-am", "a regression")
    return repo


def script(project: Project) -> list[ScriptedTurn]:
    def bash(command: str) -> ScriptedTurn:
        return ScriptedTurn(tool_calls=[ScriptedCall(name="bash", arguments={"command": command, "timeout": 300})])

    return [
        bash(project.suite),
        ScriptedTurn(
            tool_calls=[
                ScriptedCall(
                    name="edit",
                    arguments={"file_path": project.path, "old_string": project.buggy, "new_string": project.correct},
                )
            ]
        ),
        bash(project.suite),
        ScriptedTurn(
            tool_calls=[
                ScriptedCall(
                    name="finish",
                    arguments={
                        "summary": f"Fixed the regression; `{project.suite}` passes.",
                        "pr_title": "Fix the regression",
                        "pr_body": "Restores the correct behaviour.",
                    },
                )
            ]
        ),
    ]


@pytest.mark.parametrize("project", PROJECTS, ids=[p.name for p in PROJECTS])
def test_real_project_fixed_in_the_sandbox_and_the_patch_holds(
    project: Project,
    sqlite_engine: Engine,
    docker_backend: SandboxBackend,
    scripted_model: ScriptedModelServer,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    repo = release_repository(project, tmp_path)
    context = make_context(sqlite_engine, docker_backend, scripted_model.base_url, tmp_path)
    context.setup = SetupPolicy(image=SANDBOX_IMAGE, network=True, timeout=600, lifetime=1800, ca_bundle=HOST_BUNDLE)
    context.agent.command_timeout = 300
    scripted_model.state.extend(script(project))
    task_id = submit(sqlite_engine, str(repo))
    run_task(task_id, context)
    task, patch, events = outcome(sqlite_engine, task_id)
    setup = next(data for kind, data in events if kind == "setup")
    assert task.state == "succeeded", f"{task.failure_reason}\n{setup.get('log', '')[-3000:]}"
    assert setup["auto"] is True and setup["exit_code"] == 0

    before, after = [data for kind, data in events if kind == "tool_result" and data["name"] == "bash"]
    assert "returncode: 0" not in before["output"], before["output"]
    assert "returncode: 0" in after["output"] and project.passed in after["output"], after["output"]

    changed = [line.split(" b/", 1)[1] for line in patch.diff.splitlines() if line.startswith("diff --git ")]
    assert changed == [project.path]

    # A fresh checkout of the base with the patch applied passes the suite again, in a sandbox started from
    # an environment of its own (the patched tree is not the one the task's set-up ran on: no cache hit).
    fresh = tmp_path / "fresh"
    docker_backend.create_workspace(fresh)  # a disk of its own, as a task's workspace
    request.addfinalizer(lambda: remove_folder(fresh))
    git(tmp_path, "clone", "-q", str(repo), str(fresh))
    (tmp_path / "task.diff").write_text(patch.diff)
    git(fresh, "apply", str(tmp_path / "task.diff"))
    environment = prepare_environment(
        task_id="verify", repository=str(repo), workspace=fresh, setup_path=None, backend=docker_backend,
        cache=context.environments, policy=context.setup, emit=lambda event: None,
    )  # fmt: skip
    assert environment.ref is not None
    box = docker_backend.start(SandboxSpec(task_id="verify", workspace=fresh, image=environment.ref))
    try:
        enter_environment(box, environment.ref)
        rerun = box.run(project.suite, timeout=300)
    finally:
        box.close()
    assert rerun.exit_code == 0 and project.passed in rerun.stdout + rerun.stderr, rerun

"""``overnight eval`` with instances that bring their own set-up (SWE-bench's spec shape, and an
``environment_setup_commit``), end to end: real workers, Docker sandboxes, the scripted model. The instance
(bench/evalset.py ``SETUP_SAMPLE``) runs its tests under pytest-timeout, which only the requirements file of its
environment commit names: it resolves only when the set-up ran, and only when it read that commit. The tests share
one stack and run in order (the first run's environment is found again by the fourth)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from overnight.admin.eval.setups import MARKER
from store.models import Environment, Task
from tests.eval.conftest import FINISH, EvalStack

pytestmark = [pytest.mark.docker, pytest.mark.redis]
INSTANCE = "pypi__inflection-2"
F2P = ["test_inflection.py::test_dasherize[street_address-street-address]",
       "test_inflection.py::test_dasherize[person_street_address-person-street-address]"]  # fmt: skip


def _variant(stack: EvalStack, name: str, **changes: Any) -> Path:
    """The instances file with fields changed (a value of None removes the field)."""
    (instance,) = stack.instances
    changed = {k: v for k, v in {**instance, **changes}.items() if v is not None}
    path = stack.folder / f"{name}.jsonl"
    path.write_text(json.dumps(changed) + "\n")
    return path


def _environments(stack: EvalStack) -> dict[str, str | None]:
    from sqlalchemy import select

    with stack.cluster.sessions()() as session:
        return {row.pattern: row.setup_script for row in session.scalars(select(Environment))}


def _setup_event(stack: EvalStack, task_id: str) -> dict[str, Any]:
    from sqlalchemy import select

    from store.models import TaskEvent

    with stack.cluster.sessions()() as session:
        assert session.get(Task, task_id) is not None
        rows = session.scalars(select(TaskEvent).where(TaskEvent.task_id == task_id, TaskEvent.type == "setup"))
        (row,) = list(rows)
        return dict(row.data)


def _run(stack: EvalStack, instances: Path, output: str, *extra: str) -> dict[str, Any]:
    stack.script(stack.gold())
    result = stack.eval(str(instances), "--output", output, "--json", *extra)
    assert result.returncode == 0, result.stderr[-3000:] + stack.cluster.logs()
    (run,) = stack.report(output)["runs"]
    return dict(run)


def test_the_instance_set_up_runs_at_the_environment_commit_and_resolves(setup_stack: EvalStack) -> None:
    run = _run(setup_stack, setup_stack.instances_file, "spec")
    assert run["outcome"] == "resolved" and run["task_state"] == "succeeded", run
    assert set(run["tests"].values()) == {"PASSED"} and run["setup_cached"] is False
    assert run["setup_script"] == "environment set-up script"
    mirror = str((setup_stack.folder / "repos" / "pypi__inflection-timeout").resolve())
    script = _environments(setup_stack)[mirror]
    assert script is not None and script.startswith(MARKER)
    assert setup_stack.instances[0]["environment_setup_commit"] in script
    event = _setup_event(setup_stack, run["task_id"])
    assert event["script"] == "environment set-up script" and event["exit_code"] == 0
    assert "pytest-timeout" in event["log"] and "git worktree add" in event["log"]


def test_with_its_set_up_an_empty_patch_fails_only_the_fail_to_pass(setup_stack: EvalStack) -> None:
    setup_stack.script({INSTANCE: [FINISH]})
    result = setup_stack.eval(str(setup_stack.instances_file), "--output", "nothing", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = setup_stack.report("nothing")["runs"]
    assert run["outcome"] == "unresolved" and run["setup_cached"] is True
    assert run["reason"].startswith("empty patch; 2 of 2 FAIL_TO_PASS fail"), run["reason"]
    assert run["pass_to_pass"] == [3, 3] and {run["tests"][name] for name in F2P} == {"FAILED"}


def test_without_its_set_up_the_tests_do_not_run(setup_stack: EvalStack) -> None:
    run = _run(setup_stack, _variant(setup_stack, "no-spec", spec=None), "no-spec")
    assert run["outcome"] == "unresolved" and run["task_state"] == "succeeded", run
    assert run["reason"].startswith(f"2 of 2 FAIL_TO_PASS fail ({F2P[0]}"), run["reason"]
    assert set(run["tests"].values()) == {"MISSING"}  # pytest stopped before any test
    log = (setup_stack.folder / "no-spec" / "logs" / f"{INSTANCE}.1.log").read_text()
    assert "unrecognized arguments: --timeout" in log
    assert _environments(setup_stack) == {}  # the eval's environment went with the instances' set-up
    assert _setup_event(setup_stack, run["task_id"])["script"] == run["setup_script"] == "automatic set-up"


def test_the_base_commits_requirements_are_not_the_environments(setup_stack: EvalStack) -> None:
    variant = _variant(setup_stack, "no-env-commit", environment_setup_commit=None)
    run = _run(setup_stack, variant, "no-env-commit")
    assert run["outcome"] == "unresolved" and set(run["tests"].values()) == {"MISSING"}, run
    event = _setup_event(setup_stack, run["task_id"])
    assert event["exit_code"] == 0 and "pytest-timeout" not in event["log"]  # base's requirements: pytest alone
    log = (setup_stack.folder / "no-env-commit" / "logs" / f"{INSTANCE}.1.log").read_text()
    assert "unrecognized arguments: --timeout" in log


def test_a_specs_file_gives_the_same_set_up_by_repository_and_version(setup_stack: EvalStack) -> None:
    instance = setup_stack.instances[0]
    specs = setup_stack.folder / "specs.json"
    specs.write_text(json.dumps({instance["repo"]: {instance["version"]: {
        **instance["spec"], "nano_cpus": 2, "test_cmd": "pytest"}}}))  # fmt: skip
    run = _run(setup_stack, _variant(setup_stack, "by-specs", spec=None), "by-specs", "--specs", str(specs))
    assert run["outcome"] == "resolved", run
    assert run["setup_cached"] is True  # the same script as the first run's: its environment, found again


def test_grading_runs_the_eval_commands_with_the_environments_variables(setup_stack: EvalStack) -> None:
    """The eval commands deselect the test the environment's variable names: only both together break exactly it."""
    from sqlalchemy import select

    mirror = str((setup_stack.folder / "repos" / "pypi__inflection-timeout").resolve())
    with setup_stack.cluster.sessions()() as session:  # an operator's variable on the eval's environment
        row = session.scalar(select(Environment).where(Environment.pattern == mirror))
        assert row is not None
        row.variables = {"EVAL_SKIP": "test_pluralize_plurals"}
        session.commit()
    deselect = """export PYTEST_ADDOPTS="$PYTEST_ADDOPTS -k 'not $EVAL_SKIP'\""""
    spec = {**setup_stack.instances[0]["spec"], "eval_commands": [deselect]}
    run = _run(setup_stack, _variant(setup_stack, "eval-commands", spec=spec), "eval-commands")
    assert run["setup_cached"] is False  # the variables are part of the set-up's key
    assert run["reason"] == "1 of 3 PASS_TO_PASS broke (test_inflection.py::test_pluralize_plurals)", run
    assert run["tests"]["test_inflection.py::test_pluralize_plurals"] == "MISSING" and run["fail_to_pass"] == [2, 2]
    assert _environments(setup_stack)[mirror] is not None


def test_an_environment_the_eval_did_not_make_is_left_alone(setup_stack: EvalStack) -> None:
    from sqlalchemy import select

    mirror = str((setup_stack.folder / "repos" / "pypi__inflection-timeout").resolve())
    with setup_stack.cluster.sessions()() as session:
        row = session.scalar(select(Environment).where(Environment.pattern == mirror))
        assert row is not None
        row.setup_script = "echo the operator's own\n"
        session.commit()
    tasks = setup_stack.task_count()
    result = setup_stack.eval(str(setup_stack.instances_file), "--output", "refused")
    assert result.returncode == 2, result.stderr
    assert f"an environment for {mirror} exists that the eval did not make" in " ".join(result.stderr.split())
    assert _environments(setup_stack)[mirror] == "echo the operator's own\n" and setup_stack.task_count() == tasks

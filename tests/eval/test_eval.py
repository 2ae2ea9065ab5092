"""``overnight eval`` end to end on the sample set (three releases from PyPI and npm, a bug planted in each): the
instances run as tasks through the real workers and are graded in Docker sandboxes. The tests share one stack and
run in order: the gold run's environments are cached for the others, and its report is resumed and compared."""

from __future__ import annotations

import json
import shutil

import pytest

from agent.scripted import ScriptedCall, ScriptedTurn
from tests.eval.conftest import FINISH, EvalStack

pytestmark = [pytest.mark.docker, pytest.mark.redis]


def test_replaying_the_gold_fixes_resolves_every_instance(stack: EvalStack) -> None:
    stack.script(stack.gold())
    result = stack.eval(str(stack.instances_file), "--output", "gold", "--concurrency", "2", "--json")
    assert result.returncode == 0, result.stderr[-3000:] + stack.cluster.logs()
    summary = json.loads(result.stdout)
    assert summary["resolved"] == summary["graded"] == summary["planned"] == 3
    assert summary["resolved_percent"] == 100.0 and summary["errors"] == 0
    report = stack.report("gold")
    for run in report["runs"]:
        assert run["outcome"] == "resolved" and run["task_state"] == "succeeded", run
        assert set(run["tests"].values()) == {"PASSED"}, run["tests"]
        assert run["fail_to_pass"][0] == run["fail_to_pass"][1] > 0
        assert run["steps"] == 2 and run["prompt_tokens"] > 0 and run["setup_seconds"] is not None
    predictions = [json.loads(line) for line in (stack.folder / "gold" / "predictions.jsonl").read_text().splitlines()]
    assert [p["instance_id"] for p in predictions] == [i["instance_id"] for i in stack.instances]
    assert all(p["model_name_or_path"] == "overnight/mistral-medium-3.5" for p in predictions)
    for prediction, instance in zip(predictions, stack.instances, strict=True):
        fixed = [line for line in instance["patch"].splitlines() if line.startswith("+") and not line.startswith("++")]
        assert all(line in prediction["model_patch"].splitlines() for line in fixed)
    assert "eval: 3 resolved of 3" in result.stderr  # the progress bar's last state


def test_a_model_that_changes_nothing_resolves_none(stack: EvalStack) -> None:
    stack.script({instance["instance_id"]: [FINISH] for instance in stack.instances})
    result = stack.eval(str(stack.instances_file), "--output", "nothing", "--concurrency", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resolved: 0 of 3 graded runs (0.0 %)" in " ".join(result.stdout.split())
    for run in stack.report("nothing")["runs"]:
        assert run["outcome"] == "unresolved" and run["model_patch"] == ""
        assert run["reason"].startswith("empty patch; ") and "FAIL_TO_PASS fail" in run["reason"], run["reason"]
        assert run["fail_to_pass"][0] == 0
        assert run["pass_to_pass"][0] == run["pass_to_pass"][1] > 0  # the instance's other tests pass regardless
        assert run["setup_cached"] is True  # the gold run's environment, found again


def test_a_wrong_fix_fails_its_fail_to_pass(stack: EvalStack) -> None:
    edit = {"file_path": "six.py", "old_string": 'return s.encode("utf-8")', "new_string": 'return s.encode("ascii")'}
    wrong = ScriptedTurn(tool_calls=[ScriptedCall(name="edit", arguments=edit)])
    stack.script({"pypi__six-1": [wrong, FINISH]})
    result = stack.eval(str(stack.instances_file), "--output", "wrong", "--only", "pypi__six-1", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = stack.report("wrong")["runs"]
    assert run["outcome"] == "unresolved" and run["task_state"] == "succeeded"
    assert run["reason"] == "1 of 1 FAIL_TO_PASS fail (test_six.py::test_b)"
    assert run["tests"]["test_six.py::test_b"] == "FAILED" and run["pass_to_pass"] == [4, 4]
    assert "ascii" in run["model_patch"]
    assert (stack.folder / "wrong" / "logs" / "pypi__six-1.1.log").read_text().count("FAILED test_six.py::test_b")


def test_resume_skips_graded_runs_and_waits_for_filed_ones(stack: EvalStack) -> None:
    tasks = stack.task_count()
    again = stack.eval(str(stack.instances_file), "--output", "gold", "--json")
    assert again.returncode == 0 and "resuming: 3 run(s) already graded" in again.stderr, again.stderr
    assert stack.task_count() == tasks and json.loads(again.stdout)["resolved"] == 3

    # An interrupted eval: one run filed but not graded yet, one never filed.
    shutil.copytree(stack.folder / "gold", stack.folder / "partial")
    report = stack.report("partial")
    filed, never = report["runs"][0], report["runs"][1]
    filed.update(graded=False, outcome=None)
    report["runs"].remove(never)
    (stack.folder / "partial" / "report.json").write_text(json.dumps(report))
    stack.script({never["instance_id"]: stack.gold()[never["instance_id"]]})
    resumed = stack.eval(str(stack.instances_file), "--output", "partial", "--json")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming: 1 run(s) already graded" in resumed.stderr
    assert stack.task_count() == tasks + 1  # only the run never filed became a task
    runs = {run["instance_id"]: run for run in stack.report("partial")["runs"]}
    assert runs[filed["instance_id"]]["task_id"] == filed["task_id"] and runs[filed["instance_id"]]["graded"]
    assert all(run["outcome"] == "resolved" for run in runs.values()) and len(runs) == 3


def test_compare_names_the_flips_and_the_intervals(stack: EvalStack) -> None:
    result = stack.eval("compare", "nothing", "gold/report.json", "--json")
    assert result.returncode == 0, result.stderr
    comparison = json.loads(result.stdout)
    assert sorted(comparison["gained"]) == sorted(f"{i['instance_id']}#1" for i in stack.instances)
    assert comparison["lost"] == [] and comparison["paired"] == 3
    assert comparison["a"]["percent"] == 0.0 and comparison["b"]["percent"] == 100.0
    assert comparison["b"]["low"] == pytest.approx(43.85, abs=0.01) and comparison["a"]["high"] == pytest.approx(
        56.15, abs=0.01
    )
    assert comparison["mcnemar_p"] == 0.25
    table = stack.eval("compare", "gold", "nothing")
    assert "resolved only by A (lost): 3" in table.stdout and "Wilson" in table.stdout

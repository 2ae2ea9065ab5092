"""The eval's judgement without a stack: reading test logs, deciding resolved, reading instances, the statistics
of a comparison."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from overnight.admin.eval.compare import compare, mcnemar_exact, wilson
from overnight.admin.eval.grade import judge
from overnight.admin.eval.instances import Instance, InstanceError, RepoSource, load_instances, patch_files
from overnight.admin.eval.report import Report, RunRecord, load_report, save
from overnight.admin.eval.testlogs import parse_pytest, parse_tap

INSTANCE = {"instance_id": "a__b-1", "repo": "a/b", "base_commit": "abc1234", "problem_statement": "it breaks",
            "FAIL_TO_PASS": '["t.py::test_fix"]', "PASS_TO_PASS": '["t.py::test_old[x-y]"]'}  # fmt: skip


def test_pytest_summary_lines_name_each_test_and_drop_failure_messages() -> None:
    log = "PASSED t.py::test_old[x - y]\nFAILED t.py::test_fix - assert 1 == 2\nERROR t.py::test_e - boom\n" \
          "SKIPPED [1] t.py:3: later\nXFAIL t.py::test_x - known\n"  # fmt: skip
    assert parse_pytest(log) == {"t.py::test_old[x - y]": "PASSED", "t.py::test_fix": "FAILED",
                                 "t.py::test_e": "ERROR", "t.py::test_x": "XFAIL"}  # fmt: skip


def test_tap_fails_a_test_whose_process_died_in_it_or_that_asserted_nothing() -> None:
    log = "TAP version 13\n# fine\nok 1 a\n# broken\nok 2 b\nnot ok 3 c\n# tests 3\n# fail 1\n" \
          "TAP version 13\n# died\nok 1 a\n" \
          "TAP version 13\n# empty\n# last\nok 1 z\n# tests 1\n# pass 1\n# ok\n"  # fmt: skip
    assert parse_tap(log) == {"fine": "PASSED", "broken": "FAILED", "died": "FAILED", "empty": "FAILED",
                              "last": "PASSED"}  # fmt: skip


def test_resolved_needs_every_fail_to_pass_passing_and_every_pass_to_pass_still_passing() -> None:
    instance = Instance.model_validate(INSTANCE)
    both = {"t.py::test_fix": "PASSED", "t.py::test_old[x-y]": "PASSED"}
    assert judge(instance, both, diff="x", timed_out=False, timeout=1).outcome == "resolved"
    broke = judge(instance, {"t.py::test_fix": "PASSED"}, diff="x", timed_out=False, timeout=1)
    assert broke.outcome == "unresolved" and broke.tests["t.py::test_old[x-y]"] == "MISSING"
    assert broke.reason == "1 of 1 PASS_TO_PASS broke (t.py::test_old[x-y])" and broke.pass_to_pass == (0, 1)
    nothing = judge(instance, {"t.py::test_fix": "FAILED", "t.py::test_old[x-y]": "XFAIL"}, diff="", timed_out=True,
                    timeout=9)  # fmt: skip
    assert nothing.reason == "the tests timed out after 9 s; empty patch; 1 of 1 FAIL_TO_PASS fail (t.py::test_fix)"


def test_instances_read_swe_bench_rows_and_refuse_bad_ones_by_line(tmp_path: Path) -> None:
    path = tmp_path / "i.jsonl"
    path.write_text(json.dumps(INSTANCE | {"created_at": "2020", "hints_text": ""}) + "\n\n")
    (instance,) = load_instances(path)
    assert instance.fail_to_pass == ["t.py::test_fix"] and instance.test_format == "pytest"
    assert "<issue>\nit breaks\n</issue>" in instance.instruction
    path.write_text(json.dumps(INSTANCE) + "\n" + json.dumps({"instance_id": "x"}) + "\n")
    with pytest.raises(InstanceError, match="instance 2: repo: Field required"):
        load_instances(path)
    path.write_text(json.dumps([INSTANCE, INSTANCE]))
    with pytest.raises(InstanceError, match="a__b-1 appears twice"):
        load_instances(path)


def test_the_test_command_runs_the_files_the_test_patch_touches() -> None:
    diff = "--- a/tests/test_a.py\n+++ b/tests/test_a.py\n@@\n--- /dev/null\n+++ b/tests/new test.py\n@@\n"
    assert patch_files(diff).modified == ["tests/test_a.py"] and patch_files(diff).created == ["tests/new test.py"]
    instance = Instance.model_validate(INSTANCE | {"test_patch": diff})
    assert instance.test_command() == "python -m pytest -rA -p no:cacheprovider tests/test_a.py 'tests/new test.py'"


def test_mirrors_are_found_by_owner_and_name_and_only_inside_the_folder(tmp_path: Path) -> None:
    (tmp_path / "django__django").mkdir()
    source = RepoSource(mirrors=tmp_path)
    assert source.locate("django/django") == str(tmp_path / "django__django")
    with pytest.raises(InstanceError, match="no mirror of psf/requests"):
        source.locate("psf/requests")
    with pytest.raises(InstanceError):
        source.locate("../..")
    assert RepoSource().locate("psf/requests") == "https://github.com/psf/requests.git"


def test_wilson_interval_and_mcnemar_match_their_textbook_values() -> None:
    assert wilson(0, 3) == pytest.approx((0.0, 0.5615), abs=1e-4)
    assert wilson(7, 10) == pytest.approx((0.3968, 0.8922), abs=1e-4)
    assert mcnemar_exact(3, 0) == 0.25 and mcnemar_exact(5, 5) == 1.0 and mcnemar_exact(0, 0) is None


def test_compare_pairs_runs_by_instance_and_attempt() -> None:
    def report(resolved: dict[tuple[str, int], bool]) -> Report:
        runs = [RunRecord(instance_id=iid, attempt=n, task_id="t", graded=True,
                          outcome="resolved" if ok else "unresolved") for (iid, n), ok in resolved.items()]  # fmt: skip
        return Report(model_name_or_path="m", instances_file="f", attempts=2, planned=4, runs=runs)

    a = report({("x", 1): True, ("x", 2): False, ("y", 1): True, ("z", 1): False})
    b = report({("x", 1): False, ("x", 2): True, ("y", 1): True})
    result = compare(a, b)
    assert result.gained == ["x#2"] and result.lost == ["x#1"] and result.both == 1 and result.paired == 3
    assert (result.a.resolved, result.a.graded, result.b.resolved, result.b.graded) == (2, 4, 2, 3)


def test_attempts_get_a_predictions_file_each_and_a_resolved_by_any_figure(tmp_path: Path) -> None:
    def run(iid: str, attempt: int, outcome: str, cached: int = 0) -> RunRecord:
        return RunRecord(instance_id=iid, attempt=attempt, task_id=f"{iid}{attempt}", graded=True, outcome=outcome,  # type: ignore[arg-type]
                         model_patch=f"diff {iid} {attempt}\n", prompt_tokens=100, cached_tokens=cached)  # fmt: skip

    runs = [run("y", 2, "unresolved"), run("x", 1, "unresolved", 50), run("y", 1, "unresolved")]
    runs.append(run("x", 2, "resolved"))
    report = Report(model_name_or_path="overnight/m", instances_file="f", attempts=2, planned=4, runs=runs)
    report.runs.append(RunRecord(instance_id="z", attempt=1, task_id="filed, not graded"))
    save(report, tmp_path, order=["y", "x", "z"])
    first = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert [(p["instance_id"], p["model_patch"]) for p in first] == [("y", "diff y 1\n"), ("x", "diff x 1\n")]
    assert first[0]["model_name_or_path"] == "overnight/m"
    assert len((tmp_path / "predictions-attempt-2.jsonl").read_text().splitlines()) == 2
    summary = load_report(tmp_path).summary  # type: ignore[union-attr]
    assert summary is not None and summary.graded == 4 and summary.resolved == 1 and summary.resolved_percent == 25.0
    assert summary.by_attempt == {1: 0.0, 2: 50.0} and summary.resolved_any_percent == 50.0
    assert summary.cached_share == 0.125

"""GitHub and best-of-N end to end: ``/overnight attempts=2`` on an issue, each attempt run by the worker in
Docker against the scripted model (a script of its own each), the ranking's checks in fresh sandboxes, then the
best attempt's commit pushed to the task's branch and one draft pull request whose body lists every attempt:
rank, tests, size, why, and the command that fetches each other one."""

from __future__ import annotations

from typing import Any

import store.bestof
from agent.scripted import ScriptedCall, ScriptedModelServer, ScriptedTurn
from store.engine import make_sessionmaker
from tests.e2e.test_github_flow import World, _file_on_branch, world  # noqa: F401  (the fixture)
from tests.github_fake import command, deliver
from worker.github_attempts import attempts_markdown

DOCSTRING = "Add two numbers (the longer attempt)."


def turn(name: str, **arguments: Any) -> ScriptedTurn:
    return ScriptedTurn(tool_calls=[ScriptedCall(name=name, arguments=arguments)])


def script(new_body: str, title: str) -> list[ScriptedTurn]:
    return [
        turn("edit", file_path="calc.py", old_string="    return a - b", new_string=new_body),
        turn("bash", command="python3 -m unittest 2>&1 | tail -1"),
        turn("finish", summary=title, pr_title=title, pr_body=f"{title}: add() adds."),
    ]


def test_the_pull_request_is_the_best_attempt_s_and_lists_every_attempt(
    world: World,  # noqa: F811
    scripted_model: ScriptedModelServer,
) -> None:
    scripted_model.state.scripts.extend([
        script(f'    """{DOCSTRING}"""\n    return a + b', "Fix add with a docstring"),
        script("    return a + b", "Fix add"),
    ])  # fmt: skip
    response = deliver(world.api, "issue_comment", command("/overnight attempts=2 keep it short"))
    assert response.status_code == 202, response.text
    group_id = response.json()["task_id"]
    with make_sessionmaker(world.engine)() as session:
        attempts = [task.id for task in store.bestof.attempts_of(session, group_id)]
    for attempt_id in attempts:  # one after the other: attempt 1 takes the first script, attempt 2 the second
        world.run(attempt_id)  # type: ignore[operator]
    world.run(group_id)  # type: ignore[operator]  (the ranking, then publishing)

    group, patch, link, _ = world.outcome(group_id)
    assert group.state == "succeeded", group.failure_reason
    assert patch.title == "Fix add" and DOCSTRING not in patch.diff  # the best attempt's patch is the task's
    assert link.publish_state == "published" and link.pr_number == 1
    branch_file = _file_on_branch(world.remote, link.branch, "calc.py")
    assert "return a + b" in branch_file and DOCSTRING not in branch_file  # the best: tests pass, smaller
    [pull] = world.fake.pulls  # one pull request, for the task; none for its attempts
    body = pull["body"]
    assert pull["title"] == "Fix add" and body.startswith("Fix add: add() adds.\n\nFixes #1\n\n")
    assert "**Best of 2 attempts.** This pull request is attempt 2 (`tests pass; " in body
    lines = body.splitlines()
    header = lines.index("| attempt | rank | tests | size | why | get it |")
    best_row, other_row = lines[header + 2], lines[header + 3]
    assert best_row.startswith("| 2 | 1 | pass | ") and best_row.endswith("| this pull request |")
    assert other_row.startswith("| 1 | 2 | pass | ") and other_row.endswith(
        f"| `overnight diff {group_id} --attempt 1` |"
    )
    assert "1 file" in other_row and "`tests pass; " in other_row
    assert body.rstrip().endswith(f"(`overnight show {group_id}`)")
    [progress] = world.fake.comments.values()  # the one progress comment, edited in place
    assert progress["body"].endswith(f"pull request: {pull['html_url']} (the best of 2 attempts: attempt 2)\n\n"
                                     f"Task `{group_id}` (`overnight show {group_id}`)")  # fmt: skip
    # No attempt published anything of its own.
    for attempt_id in attempts:
        assert world.outcome(attempt_id)[2] is None


def test_a_reason_cannot_break_the_table_mention_anyone_or_start_markup() -> None:
    ranking = store.bestof.Ranking(best=1, entries=[
        store.bestof.RankEntry(attempt=1, task_id="a" * 16, state="succeeded", passed=True, patch_bytes=2048,
                               files_changed=2, rank=1, reason="tests pass; 2.0 KB"),
        store.bestof.RankEntry(attempt=2, task_id="b" * 16, state="failed", rank=2,
                               reason="no patch: `x` | @octocat <img src=x>\n# heading " + "long " * 60),
    ])  # fmt: skip
    text = attempts_markdown("g" * 16, ranking, public_url="https://overnight.example")
    row = text.splitlines()[-1]
    assert row.startswith("| [2](https://overnight.example/tasks/bbbbbbbbbbbbbbbb) | 2 | not checked | no patch |")
    assert "`no patch: 'x' \\| @octocat <img src=x> # heading long" in row and row.endswith("…` | — |")
    assert row.count(" | ") == 5 and "\n" not in row
    assert "| 2.0 KB, 2 files |" in text.splitlines()[-2]

"""The pages as the server renders them: the list (filters, paging, figures), a task's page and the fragment
that refreshes it, the new-task form; the helpers they use."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from agent.budget import AgentConfig, Budget
from api.app import create_app
from overnight.events import EVENT_MODELS
from overnight.settings import Settings
from store.models import GitHubLink, Task, TaskState
from tests.web.conftest import Browser, sign_in
from web.present import duration_text, short_repo
from web.queries import diffstat_lines

DIFF = (
    "diff --git a/calc.py b/calc.py\n--- a/calc.py\n+++ b/calc.py\n"
    "@@ -1,2 +1,2 @@\n def add(a, b):\n-    return a - b\n+    return a + b\n"
)
ROW = re.compile(r'<tr id="task-([0-9a-f]+)"')


def test_the_list_is_newest_first_with_state_changes_and_usage(
    browser: Callable[..., Browser], make_task: Callable[..., str], sessions: Any
) -> None:
    first = make_task("alice", instruction="First task")
    done = make_task("alice", instruction="Second task\nwith details", state=TaskState.succeeded, diff=DIFF)
    with sessions.begin() as session:
        session.get(Task, done).prompt_tokens = 12_400  # type: ignore[union-attr]
    page = browser("alice").page("/")
    assert ROW.findall(page.text) == [done, first]
    row = page.text.split(f'id="task-{done}"')[1].split("</tr>")[0]
    assert "Second task" in row and "with details" not in row  # the first line only
    assert 'class="badge state-succeeded">Succeeded' in row and "acme/widgets" in row
    assert ">+1<" in row and ">\N{MINUS SIGN}1<" in row and "12.4k tokens" in row


def test_filters_and_paging(browser: Callable[..., Browser], make_task: Callable[..., str]) -> None:
    ids = [make_task("alice", instruction=f"task {n}") for n in range(55)]
    failed = make_task("alice", state=TaskState.failed, reason="clone failed", repo="https://github.com/acme/other.git")
    alice = browser("alice")
    first = alice.page("/")
    assert len(ROW.findall(first.text)) == 50
    older = re.search(r'href="(/\?cursor=[^"]+)" rel="next"', first.text)
    assert older
    second = alice.page(older.group(1).replace("&amp;", "&"))
    assert ROW.findall(second.text) == list(reversed(ids))[49:]
    assert ROW.findall(alice.page("/?state=failed").text) == [failed]
    assert ROW.findall(alice.page("/?repo=https://github.com/acme/other.git").text) == [failed]
    assert "https://github.com/acme/other.git" in first.text  # offered in the repository filter's list
    unknown = alice.page("/?state=bogus")
    assert "There is no state" in unknown.text and len(ROW.findall(unknown.text)) == 50
    stale = alice.page("/?cursor=not-a-cursor")
    assert stale.status_code == 200 and "not valid" in stale.text


def test_the_rows_fragment_is_the_same_page_for_refreshing(
    browser: Callable[..., Browser], make_task: Callable[..., str]
) -> None:
    task_id = make_task("alice", state=TaskState.running)
    fragment = browser("alice").page("/?partial=rows")
    assert fragment.text.lstrip().startswith(f'<tr id="task-{task_id}" data-state="running">')
    assert "<html" not in fragment.text


def test_the_task_page_says_why_it_failed_and_what_it_cost(
    settings: Settings, tokens: dict[str, str], make_task: Callable[..., str], sessions: Any
) -> None:
    priced = settings.model_copy(update={"agent": AgentConfig(budget=Budget(price_input=1.5, price_output=7.5))})
    client = TestClient(create_app(priced), follow_redirects=False)
    sign_in(client, tokens["alice"])
    task_id = make_task("alice", state=TaskState.failed, reason="step budget exhausted (100 steps)")
    with sessions.begin() as session:
        task = session.get(Task, task_id)
        task.prompt_tokens, task.completion_tokens = 1_000_000, 100_000  # type: ignore[union-attr]
    page = client.get(f"/tasks/{task_id}")
    assert "Why it failed:</strong> step budget exhausted (100 steps)" in page.text
    assert "≈ 2.25" in page.text  # 1M prompt tokens at 1.5, 0.1M completion at 7.5
    assert 'data-action="retry"' in page.text and 'data-action="cancel"' not in page.text
    assert f"overnight apply {task_id}" in page.text
    summary = client.get(f"/tasks/{task_id}/summary")
    assert summary.headers["x-overnight-state"] == "failed" and "<html" not in summary.text


def test_a_running_task_page_carries_its_events_and_a_cancel_button(
    browser: Callable[..., Browser], make_task: Callable[..., str]
) -> None:
    task_id = make_task("alice", state=TaskState.running)
    page = browser("alice").page(f"/tasks/{task_id}")
    events = re.search(r'<script type="application/json" id="initial-events">(.*?)</script>', page.text, re.S)
    assert events and '"type": "state"' in events.group(1) and '"state": "running"' in events.group(1)
    assert 'data-action="cancel"' in page.text and "Send follow-up" in page.text


def test_the_github_issue_and_pull_request_are_linked(
    browser: Callable[..., Browser], make_task: Callable[..., str], sessions: Any
) -> None:
    task_id = make_task("alice", state=TaskState.succeeded, diff=DIFF)
    with sessions.begin() as session:
        session.add(GitHubLink(task_id=task_id, repo="acme/widgets", number=7, source="label", sender="alice",
                               branch="overnight/x", base_branch="main", pr_number=9,
                               pr_url="https://github.com/acme/widgets/pull/9", publish_state="published"))  # fmt: skip
    alice = browser("alice")
    for path in ["/", f"/tasks/{task_id}"]:
        text = alice.page(path).text
        assert 'href="https://github.com/acme/widgets/issues/7"' in text
        assert 'href="https://github.com/acme/widgets/pull/9"' in text


def test_a_link_that_is_not_http_is_never_made_a_link(
    browser: Callable[..., Browser], make_task: Callable[..., str], sessions: Any
) -> None:
    task_id = make_task("alice", state=TaskState.succeeded, diff=DIFF)
    with sessions.begin() as session:
        session.add(GitHubLink(task_id=task_id, repo="acme/widgets", number=7, source="label", sender="alice",
                               branch="b", base_branch="main", pr_number=9, pr_url="javascript:alert(1)",
                               publish_state="published"))  # fmt: skip
    assert 'href="javascript:' not in browser("alice").page(f"/tasks/{task_id}").text


def test_the_new_task_form_offers_the_users_repositories(
    browser: Callable[..., Browser], make_task: Callable[..., str]
) -> None:
    make_task("alice", repo="https://github.com/acme/gadgets.git")
    page = browser("alice").page("/tasks/new?repo=https://github.com/acme/widgets.git&ref=dev")
    assert '<option value="https://github.com/acme/gadgets.git">' in page.text
    assert 'value="https://github.com/acme/widgets.git"' in page.text and 'value="dev"' in page.text
    assert 'name="idempotency_key"' in page.text and "local path" not in page.text  # not an admin


def test_static_files_are_served_and_nothing_comes_from_another_host(browser: Callable[..., Browser]) -> None:
    client = browser().client
    for name in ["app.js", "feed.js", "diff.js", "task.js", "list.js", "new.js", "app.css"]:
        assert client.get(f"/static/{name}").status_code == 200, name
    templates = Path(__file__).parents[2] / "web" / "templates"
    static = Path(__file__).parents[2] / "web" / "static"
    for path in [*templates.glob("*.html"), *static.glob("*.js"), *static.glob("*.css")]:
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", path.read_text()), path


def test_the_feed_renders_every_event_type_the_worker_writes() -> None:
    script = (Path(__file__).parents[2] / "web" / "static" / "feed.js").read_text()
    renderers = script.split("const RENDERERS = {")[1].split("\n  };")[0]
    for kind in EVENT_MODELS:
        assert re.search(rf"^\s+\"?{kind}\"?: ", renderers, re.M), f"feed.js has no renderer for {kind} events"


@pytest.mark.parametrize(
    ("repo", "short"),
    [
        ("https://github.com/acme/widgets.git", "acme/widgets"),
        ("git@github.com:acme/widgets.git", "acme/widgets"),
        ("ssh://git@host:22/team/sub/project.git", "sub/project"),
        ("/home/alice/src/project", "src/project"),
    ],
)
def test_short_repository_names(repo: str, short: str) -> None:
    assert short_repo(repo) == short


def test_diffstat_and_duration_words() -> None:
    assert diffstat_lines(" 3 files changed, 10 insertions(+), 2 deletions(-)") == (10, 2)
    assert diffstat_lines(" 1 file changed, 1 insertion(+)") == (1, 0)
    assert diffstat_lines("") == (None, None)
    assert [duration_text(s) for s in (None, 5, 65, 3725)] == ["—", "5 s", "1 min 05 s", "1 h 02 min"]

"""Client commands: they speak HTTP to an Overnight server, nothing else.

Exit codes: 0 success; 1 the task failed or was cancelled (with --wait / logs -f); 2 a usage error (also a
request the server refused: no such task, wrong state, invalid input); 3 server unreachable or auth failure.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from overnight.cli.attempts import print_attempts
from overnight.cli.checkout import CheckoutError, inspect, local_changes_diff
from overnight.cli.errors import ClientError
from overnight.cli.images import ImageOption, image_parts
from overnight.cli.render import Status, blocked_hosts, describe
from overnight.cli.terminal import SafeConsole

if TYPE_CHECKING:
    from overnight.cli.client import APIClient

# Server data (diffs, tool output, titles, reasons) reaches the terminal only through these: control
# characters in it are shown as visible escapes, never written raw.
console = SafeConsole(highlight=False)
err = SafeConsole(stderr=True, highlight=False, soft_wrap=True)
FINAL_STATES = {"succeeded", "failed", "cancelled"}
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (for scripts).")]
AttemptOption = Annotated[int | None, typer.Option(help="Attempt K's patch (a task run with --attempts N).")]


def _client() -> APIClient:
    # Imported here: `--help` and usage errors need neither httpx nor pydantic-settings.
    from overnight.cli.client import APIClient
    from overnight.cli.settings import ClientSettings

    try:
        settings = ClientSettings()
    except ValueError as exc:  # a config file that is not JSON, or a value of the wrong type
        problem = " ".join(str(exc).split())
        raise ClientError(
            f"cannot read the client settings (OVERNIGHT_* or config.json): {problem}", exit_code=2
        ) from exc
    return APIClient(settings)


def fail(message: str, code: int) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(message)}")  # the message may quote a server: no markup from there
    return typer.Exit(code)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _task_exit(task: dict[str, Any]) -> None:
    if task["state"] != "succeeded":
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    for command in (submit, list_, show, logs, diff, apply, say, cancel, retry, follow_up, login, logout):
        name = {"list_": "list", "follow_up": "follow-up"}.get(command.__name__, command.__name__)
        panel = "Account" if command in (login, logout) else "Tasks"
        app.command(name, rich_help_panel=panel)(command)


def login(
    server: Annotated[str, typer.Option(help="Base URL of the Overnight API.")],
    token: Annotated[str, typer.Option(prompt=True, hide_input=True, help="Your API token (prompted if absent).")],
    as_json: JsonOption = False,
) -> None:
    """Store the server and token in the client config (mode 0600) after checking them."""
    from overnight.cli.client import APIClient
    from overnight.cli.settings import ClientSettings, config_dir_from_env, write_client_config

    try:
        from pydantic import SecretStr

        APIClient(ClientSettings(server=server, token=SecretStr(token))).whoami()
    except ClientError as exc:
        raise fail(str(exc), exc.exit_code) from exc
    path = write_client_config(config_dir_from_env(), server=server.rstrip("/"), token=token)
    if as_json:
        _print_json({"server": server.rstrip("/"), "config": str(path)})
        return
    err.print(f"logged in to {server}; saved in {path}")


def logout(as_json: JsonOption = False) -> None:
    """Forget the stored token."""
    from overnight.cli.settings import config_dir_from_env, read_client_config

    directory = config_dir_from_env()
    config = read_client_config(directory)
    if config:
        (directory / "config.json").unlink()
    if as_json:
        _print_json({"logged_out": bool(config), "server": config.get("server")})
    elif not config:
        err.print("not logged in")
    else:
        err.print(f"logged out of {config.get('server')}")


def submit(
    instruction: Annotated[str, typer.Argument(help="What the agent should do.")],
    repo: Annotated[str | None, typer.Option(help="Git URL or path (default: this checkout's origin).")] = None,
    ref: Annotated[str | None, typer.Option(help="Branch, tag or commit (default: what you have checked out).")] = None,
    setup: Annotated[str | None, typer.Option(help="Set-up script in the repository to run instead.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Model calls the task may make.")] = None,
    attempts: Annotated[int, typer.Option(help="Best-of-N: run it N times at once (1-8), keep the best.")] = 1,
    no_local_changes: Annotated[
        bool, typer.Option("--no-local-changes", help="Start from the remote's commit; ignore unpushed work.")
    ] = False,
    image: ImageOption = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the task until it ends, then print its diff.")] = False,
    as_json: JsonOption = False,
) -> None:
    """File a task. Inside a git checkout the repository, branch and base commit come from it, and unpushed
    commits and uncommitted files go along, so the task starts from exactly what you have."""
    body: dict[str, Any] = {"instruction": instruction, "ref": ref, "setup": setup, "max_steps": max_steps,
                            "attempts": attempts if attempts != 1 else None}  # fmt: skip
    if repo is None:
        try:
            checkout = inspect(Path.cwd())
            body["repo"] = checkout.repo
            if ref is None:
                body["ref"] = checkout.base
                if checkout.has_local_changes and not no_local_changes:
                    diff = local_changes_diff(checkout)
                    body["local_changes"] = {"content": base64.b64encode(diff.encode()).decode()}
                    err.print(f"uploading your local changes: {checkout.ahead} unpushed commit(s), "
                              f"{len(checkout.dirty)} changed file(s)")  # fmt: skip
                elif checkout.has_local_changes:
                    err.print(f"ignoring local changes; the task starts from {checkout.base[:12]}")
        except CheckoutError as exc:
            raise fail(str(exc), 2) from exc
    elif "://" not in repo and ":" not in repo.split("/", 1)[0] and Path(repo).expanduser().exists():
        body["repo"] = str(Path(repo).expanduser().resolve())
    else:
        body["repo"] = repo
    try:
        client = _client()
        task = client.create_task({key: value for key, value in body.items() if value is not None}, image_parts(image))
        if not wait:
            _print_json(task) if as_json else console.print(task["id"], markup=False)
            return
        if not as_json:
            err.print(f"task {escape(task['id'])} queued; following it")
        task = _follow(client, task["id"], quiet=as_json)
        if as_json:
            _print_json(task)
        elif task["state"] == "succeeded":
            _print_diff(client.patch(task["id"]))
    except ClientError as exc:
        raise fail(str(exc), exc.exit_code) from exc
    _task_exit(task)


def _follow(client: APIClient, task_id: str, *, quiet: bool) -> dict[str, Any]:
    from rich.live import Live

    status = Status()
    if quiet:
        for event in client.follow_events(task_id):
            status.update(event)
        return client.get_task(task_id)
    live = Live(status, console=err, transient=True, auto_refresh=True, refresh_per_second=4)
    with live:
        for event in client.follow_events(task_id):
            status.update(event)
            line = describe(event)
            if line:
                live.console.print(line)
    return client.get_task(task_id)


def _print_diff(diff: str) -> None:
    if not diff:
        err.print("no changes needed: the patch is empty")
        return
    if not sys.stdout.isatty():
        sys.stdout.write(diff)
        return
    for line in diff.removesuffix("\n").split("\n"):  # not splitlines(): a lone \r or \x0c is shown, not a break
        line = line.removesuffix("\r")  # a CRLF line's end; any other \r is shown as \x0d
        style = (
            "green"
            if line.startswith("+")
            else "red"
            if line.startswith("-")
            else "cyan"
            if line.startswith("@@")
            else None
        )
        console.print(line, style=style, markup=False, highlight=False)


def list_(
    state: Annotated[str | None, typer.Option(help="Only tasks in this state.")] = None,
    repo: Annotated[str | None, typer.Option(help="Only tasks of this repository.")] = None,
    limit: Annotated[int, typer.Option(help="How many.")] = 30,
    as_json: JsonOption = False,
) -> None:
    """List your recent tasks."""
    try:
        tasks = _client().list_tasks(state=state, repo=repo, limit=limit)
    except ClientError as exc:
        raise fail(str(exc), exc.exit_code) from exc
    if as_json:
        _print_json(tasks)
        return
    from rich.table import Table

    table = Table("id", "state", "repository", "age", "title", box=None, pad_edge=False)
    for task in tasks:
        patch = task.get("patch")
        title = str((patch.get("title") if isinstance(patch, dict) else None) or task["instruction"] or " ")
        cells = (task["id"], task["state"], task["repo"], _age(task["created_at"]), title.splitlines()[0][:60])
        table.add_row(*map(escape, cells))  # a title is model-written: "[/x]" in it is text, not markup
    console.print(table)


def _age(moment: str) -> str:
    try:
        seconds = (datetime.now(UTC) - datetime.fromisoformat(moment.replace("Z", "+00:00"))).total_seconds()
    except (ValueError, TypeError):  # not an ISO timestamp with a zone
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def show(task_id: str, as_json: JsonOption = False) -> None:
    """Show one task (a task run with --attempts: each attempt, its rank and why)."""
    try:
        client = _client()
        task = client.get_task(task_id)
        attempts = client.attempts(task_id) if (task.get("attempts") or 1) > 1 else []
    except ClientError as exc:
        raise fail(str(exc), exc.exit_code) from exc
    if as_json:
        _print_json({**task, "attempts_detail": attempts} if attempts else task)
        return
    for key in ("id", "state", "attempt", "repo", "ref", "base_sha", "steps", "created_at", "finished_at",
                "failure_reason"):  # fmt: skip
        if task.get(key) not in (None, ""):
            console.print(f"[bold]{key}[/bold]: {escape(str(task[key]))}", markup=True)
    github = task.get("github")
    if isinstance(github, dict):
        pull = github.get("pr_url") or f"branch {github.get('branch')}"
        error = github.get("publish_error")
        state = f"{github.get('publish_state')}" + (f" ({error})" if error else "")
        line = f"{github.get('repo')}#{github.get('number')} → {pull}, {state}"
        console.print(f"[bold]github[/bold]: {escape(line)}", markup=True)
    if task.get("attempt_of"):
        console.print(f"[bold]attempt[/bold]: {task.get('attempt_index')} of {escape(str(task['attempt_of']))}")
    elif attempts:
        print_attempts(console, task, attempts)
    blocked = blocked_hosts(task.get("network_blocked"))
    if blocked:
        console.print(f"[bold]blocked[/bold]: {escape(blocked)}", markup=True)
    console.print(f"[bold]instruction[/bold]: {escape(task['instruction'])}")


def logs(
    task_id: str,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep following until the task ends.")] = False,
    as_json: JsonOption = False,
) -> None:
    """The task's events: model messages, tool calls and results, states."""
    try:
        client = _client()
        if follow:
            if as_json:
                for event in client.follow_events(task_id):
                    sys.stdout.write(json.dumps(event) + "\n")
                    sys.stdout.flush()
                _task_exit(client.get_task(task_id))
                return
            _task_exit(_follow(client, task_id, quiet=False))
            return
        events = client.events(task_id)
    except ClientError as exc:
        raise fail(str(exc), exc.exit_code) from exc
    if as_json:
        _print_json(events)
        return
    for event in events:
        line = describe(event)
        if line:
            console.print(line)


def diff(task_id: str, attempt: AttemptOption = None, as_json: JsonOption = False) -> None:
    """Print a task's patch (colored on a terminal, plain when piped: `git apply` takes it)."""
    try:
        client = _client()
        if as_json:
            _print_json(client.patch_json(task_id, attempt=attempt))
            return
        _print_diff(client.patch(task_id, attempt=attempt))
    except ClientError as exc:
        raise fail(str(exc), exc.exit_code) from exc


def apply(task_id: str, attempt: AttemptOption = None, as_json: JsonOption = False) -> None:
    """Apply a task's patch to this checkout on a new branch `overnight/ID` with `git am`."""
    try:
        status = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, check=True)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        raise fail("not inside a git checkout", 2) from exc
    if status.stdout.strip():
        raise fail("the working tree has uncommitted changes; commit or stash them first", 2)
    try:
        client = _client()
        patch = client.patch_json(task_id, attempt=attempt)
        mbox = client.patch(task_id, "mbox", attempt=attempt)
    except ClientError as exc:
        raise fail(str(exc), exc.exit_code) from exc
    branch = f"overnight/{task_id}" + (f"-{attempt}" if attempt else "")
    start = patch["base_sha"]
    if subprocess.run(["git", "cat-file", "-e", f"{start}^{{commit}}"], capture_output=True).returncode != 0:
        raise fail(f"this checkout does not have the task's base commit {start[:12]}: fetch first", 2)
    checkout = subprocess.run(["git", "checkout", "-q", "-b", branch, start], capture_output=True, text=True)
    if checkout.returncode != 0:  # e.g. the branch is there from an earlier apply
        raise fail(f"git checkout failed: {(checkout.stderr.strip().splitlines() or ['?'])[-1]}", 2)
    if mbox:
        applied = subprocess.run(["git", "am", "-q", "--3way"], input=mbox, text=True, capture_output=True)
        if applied.returncode != 0:
            subprocess.run(["git", "am", "--abort"], capture_output=True)
            raise fail(f"git am failed: {applied.stderr.strip().splitlines()[-1:] or applied.returncode}", 1)
    result = {"branch": branch, "base_sha": start, "files_changed": patch["files_changed"], "empty": not mbox}
    if as_json:
        _print_json(result)
    else:
        err.print(f"on branch {branch}: {patch['files_changed']} file(s) changed" if mbox else
                  f"on branch {branch}: no changes needed (the patch is empty)")  # fmt: skip


def say(
    task_id: str,
    text: Annotated[str, typer.Argument(help="The message.")],
    queue: Annotated[
        bool, typer.Option("--queue", help="Hold it until the agent would finish, then go on with it.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Talk to a task while it runs: a steer reaches the model at its next tool boundary; --queue waits until
    it would finish, and the run goes on with it. `logs` shows when it was delivered, or why it was dropped."""
    try:
        message = _client().send_message(task_id, text, mode="queue" if queue else "steer")
    except ClientError as exc:
        raise fail(str(exc), exc.exit_code) from exc
    if as_json:
        _print_json(message)
    else:
        console.print(f"message {message['id']} to {task_id}: {message['state']} ({message['mode']})", markup=False)


def cancel(task_id: str, as_json: JsonOption = False) -> None:
    """Cancel a task (a running one stops within seconds; its partial diff is kept)."""
    _post_and_show(f"/v1/tasks/{task_id}/cancel", None, as_json)


def retry(task_id: str, as_json: JsonOption = False) -> None:
    """File a new attempt of an ended task."""
    _post_and_show(f"/v1/tasks/{task_id}/retry", None, as_json)


def follow_up(
    task_id: str,
    instruction: Annotated[str, typer.Argument(help="What to do next, on top of the task's patch.")],
    as_json: JsonOption = False,
) -> None:
    """Start a new task from this task's patch ("now also fix X")."""
    _post_and_show(f"/v1/tasks/{task_id}/follow-up", {"instruction": instruction}, as_json)


def _post_and_show(path: str, body: dict[str, Any] | None, as_json: bool) -> None:
    try:
        task = _client().post(path, body)
    except ClientError as exc:
        raise fail(str(exc), exc.exit_code) from exc
    if as_json:
        _print_json(task)
    else:
        console.print(f"{task['id']}: {task['state']}", markup=False)

"""The ``overnight`` command line: client commands speak HTTP; server commands (up, api, worker, image)
import the server side only when they run, so that the client starts fast."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from overnight.cli.client import APIClient, ClientError
from overnight.settings import ClientSettings

app = typer.Typer(
    help="Overnight: file a coding task, come back to a PR-ready patch.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
image_app = typer.Typer(help="The sandbox base image (server side).", no_args_is_help=True)
app.add_typer(image_app, name="image")
token_app = typer.Typer(help="API tokens (server side).", no_args_is_help=True)
app.add_typer(token_app, name="token")
console = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)
FINAL_STATES = {"succeeded", "failed", "cancelled"}


def _client() -> APIClient:
    return APIClient(ClientSettings())


def _fail(message: str, code: int) -> typer.Exit:
    err.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


@app.command()
def submit(
    instruction: Annotated[str, typer.Argument(help="What the agent should do.")],
    repo: Annotated[str, typer.Option("--repo", help="Git URL, git@host:path, or a local path.")],
    ref: Annotated[str | None, typer.Option(help="Branch, tag or commit (default branch if omitted).")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Model calls the task may make.")] = None,
    setup: Annotated[
        str | None, typer.Option(help="Set-up script in the repository to run instead of .overnight/setup.sh.")
    ] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the task until it ends, then print its diff.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """File a task through the API and print its id."""
    if "://" not in repo and ":" not in repo.split("/", 1)[0] and Path(repo).expanduser().exists():
        repo = str(Path(repo).expanduser().resolve())
    body = {"repo": repo, "ref": ref, "instruction": instruction, "max_steps": max_steps, "setup": setup}
    try:
        client = _client()
        task = client.create_task({k: v for k, v in body.items() if v is not None})
        if not wait:
            _print_json(task) if as_json else console.print(task["id"])
            return
        if not as_json:
            err.print(f"task {task['id']} queued; following it")
        task = _follow(client, task["id"], quiet=as_json)
        if as_json:
            _print_json(task)
        elif task["state"] == "succeeded":
            _print_diff(client, task["id"])
    except ClientError as exc:
        raise _fail(str(exc), exc.exit_code) from exc
    if task["state"] != "succeeded":
        raise typer.Exit(1)


def _follow(client: APIClient, task_id: str, *, quiet: bool, poll: float = 1.0) -> dict[str, Any]:
    after = 0
    while True:
        for event in client.events(task_id, after=after):
            after = event["seq"]
            if not quiet:
                err.print(_describe_event(event))
        task = client.get_task(task_id)
        if task["state"] in FINAL_STATES:
            for event in client.events(task_id, after=after):
                if not quiet:
                    err.print(_describe_event(event))
            return task
        time.sleep(poll)


def _describe_event(event: dict[str, Any]) -> str:
    data, kind = event["data"], event["type"]
    if kind == "state":
        reason = f": {data['reason']}" if data.get("reason") else ""
        return f"[bold]{data['state']}[/bold]{reason}"
    if kind == "phase":
        return f"[dim]{data['phase']}[/dim]"
    if kind == "tool_call":
        return f"[cyan]step {data['step']}[/cyan] {data['name']} {data['arguments'][:120]}"
    if kind == "tool_result":
        first = (data.get("output") or "").strip().splitlines()[:1]
        return f"  [dim]→ {(first[0] if first else '')[:120]}[/dim]"
    if kind == "model_response":
        return f"[dim]step {data['step']}: model ({data['usage']['prompt_tokens']} prompt tokens)[/dim]"
    return f"[dim]{kind}[/dim]"


def _print_diff(client: APIClient, task_id: str) -> None:
    diff = client.patch(task_id)
    if not diff:
        err.print("no changes needed: the patch is empty")
    sys.stdout.write(diff)


@app.command()
def diff(task_id: str) -> None:
    """Print a task's patch (a git diff that `git apply` takes)."""
    try:
        _print_diff(_client(), task_id)
    except ClientError as exc:
        raise _fail(str(exc), exc.exit_code) from exc


@app.command()
def show(task_id: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show one task."""
    try:
        task = _client().get_task(task_id)
    except ClientError as exc:
        raise _fail(str(exc), exc.exit_code) from exc
    if as_json:
        _print_json(task)
        return
    for key in (
        "id",
        "state",
        "repo",
        "ref",
        "base_sha",
        "steps",
        "created_at",
        "finished_at",
        "failure_reason",
    ):
        if task.get(key) is not None:
            console.print(f"[bold]{key}[/bold]: {task[key]}")
    console.print(f"[bold]instruction[/bold]: {task['instruction']}")


@app.command("list")
def list_(
    state: Annotated[str | None, typer.Option(help="Only tasks in this state.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List recent tasks."""
    try:
        tasks = _client().list_tasks(state=state)
    except ClientError as exc:
        raise _fail(str(exc), exc.exit_code) from exc
    if as_json:
        _print_json(tasks)
        return
    for task in tasks:
        console.print(f"{task['id']}  {task['state']:<9}  {task['repo']}  {task['instruction'][:60]!r}")


@app.command()
def cancel(task_id: str) -> None:
    """Cancel a task (a running one stops at its next step)."""
    try:
        task = _client().cancel(task_id)
    except ClientError as exc:
        raise _fail(str(exc), exc.exit_code) from exc
    console.print(f"{task['id']}: {task['state']}{' (stopping)' if task['state'] == 'running' else ''}")


@app.command()
def up(
    host: Annotated[str | None, typer.Option(help="Address the API listens on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port the API listens on.")] = None,
    concurrency: Annotated[int, typer.Option(help="Tasks the worker runs at once.")] = 1,
) -> None:
    """Start the API and one worker on embedded defaults (server side)."""
    from overnight.cli.server import run_up

    raise typer.Exit(run_up(host=host, port=port, concurrency=concurrency, say=err.print))


@image_app.command("build")
def image_build(
    name: Annotated[str | None, typer.Option(help="Image name (default: OVERNIGHT_SANDBOX_IMAGE).")] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even if the image exists.")] = False,
    check: Annotated[
        bool, typer.Option(help="Run a smoke command per toolchain in a sandbox; print versions.")
    ] = False,
) -> None:
    """Build the sandbox base image offline (debootstrap + apt + docker import); no-op when present."""
    from overnight.cli.server import build_image

    raise typer.Exit(build_image(name=name, force=force, check=check, say=err.print))


@token_app.command("create")
def token_create(
    user: Annotated[str, typer.Option(help="User name (created on first use).")],
    admin: Annotated[bool, typer.Option(help="The user sees every task.")] = False,
) -> None:
    """Create a bearer token for USER (stored hashed; printed once)."""
    from overnight.cli.server import create_token

    code, token = create_token(user=user, admin=admin, say=err.print)
    if token:
        sys.stdout.write(token + "\n")
    raise typer.Exit(code)


def main() -> None:
    app()

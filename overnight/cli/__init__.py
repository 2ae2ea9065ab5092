"""The ``overnight`` command line. Client commands (``overnight.cli.commands``) speak HTTP only; the server's
commands (up, doctor, image, token, secrets, migrate, bench llm, firewall, eval) are declared here and run from
``overnight.admin``, imported only when one of them runs, so that the client starts fast and never loads the
server side."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.markup import escape

from overnight.cli.commands import err, register
from overnight.cli.environments import env_app

app = typer.Typer(
    help="Overnight: file a coding task, come back to a PR-ready patch.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
SERVER = "Server (run on the Overnight host)"
register(app)
app.add_typer(env_app, name="env", rich_help_panel="Environments")
image_app = typer.Typer(help="The sandbox base image.", no_args_is_help=True)
app.add_typer(image_app, name="image", rich_help_panel=SERVER)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
app.add_typer(token_app, name="token", rich_help_panel=SERVER)
bench_app = typer.Typer(help="Benchmarks (for the model host).", no_args_is_help=True)
app.add_typer(bench_app, name="bench", rich_help_panel=SERVER)
secrets_app = typer.Typer(help="The key environments' secrets are sealed with.", no_args_is_help=True)
app.add_typer(secrets_app, name="secrets", rich_help_panel=SERVER)
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@app.command(rich_help_panel=SERVER)
def up(
    host: Annotated[str | None, typer.Option(help="Address the API listens on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port the API listens on.")] = None,
    concurrency: Annotated[int, typer.Option(help="Tasks the worker runs at once.")] = 1,
) -> None:
    """Start the API and one worker on embedded defaults (server side)."""
    from overnight.admin.server import run_up

    raise typer.Exit(run_up(host=host, port=port, concurrency=concurrency, say=err.print))


@image_app.command("build")
def image_build(
    name: Annotated[str | None, typer.Option(help="Image name (default: OVERNIGHT_SANDBOX_IMAGE).")] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even if the image exists.")] = False,
    check: Annotated[
        bool, typer.Option(help="Run a smoke command per toolchain in a sandbox; print versions.")
    ] = False,
    dockerfile: Annotated[
        str | None,
        typer.Option(
            help="Build with `docker build` from this Dockerfile instead (hosts that can pull; e.g. "
            "infra/sandbox/Dockerfile), in the context of --context."
        ),
    ] = None,
    context: Annotated[str, typer.Option(help="Build context of --dockerfile.")] = ".",
) -> None:
    """Build the sandbox base image offline (debootstrap + apt + docker import); no-op when present."""
    from pathlib import Path

    from overnight.admin.image import build_image

    source = (Path(dockerfile), Path(context)) if dockerfile else None
    raise typer.Exit(build_image(name=name, force=force, check=check, say=err.print, dockerfile=source))


@app.command(rich_help_panel=SERVER)
def firewall(
    watch: Annotated[float, typer.Option(min=0, help="Re-apply every this many seconds (0: once).")] = 0,
    check: Annotated[bool, typer.Option(help="Only say whether it is in place (exit 1 if not).")] = False,
) -> None:
    """Install the set-up network's firewall where the Docker engine runs (SANDBOX_SETUP_FIREWALL=external)."""
    from overnight.admin.firewall import run_firewall

    raise typer.Exit(run_firewall(watch=watch, check=check, say=err.print))


@token_app.command("create")
def token_create(
    user: Annotated[str, typer.Option(help="User name (created on first use).")],
    admin: Annotated[bool, typer.Option(help="The user sees every task.")] = False,
    expires_in_days: Annotated[
        float | None,
        typer.Option(min=0, help="Days until the token expires; 0: never (default: OVERNIGHT_TOKEN_TTL_DAYS)."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a bearer token for USER (stored hashed; printed once)."""
    from overnight.admin.tokens import create_token

    token, expires_at = create_token(user=user, admin=admin, expires_in_days=expires_in_days, say=err.print)
    expires = expires_at.isoformat(timespec="seconds") if expires_at else None
    text = json.dumps({"user": user, "admin": admin, "token": token, "expires_at": expires}) if as_json else token
    sys.stdout.write(text + "\n")


@token_app.command("list")
def token_list(
    user: Annotated[str | None, typer.Option(help="Only this user's tokens.")] = None, as_json: JsonFlag = False
) -> None:
    """List tokens: id, user, state (active, expired, revoked), expiry and last use (to the minute)."""
    from rich.table import Table

    from overnight.admin.tokens import list_tokens
    from overnight.cli.commands import console

    tokens = list_tokens(user=user)
    if as_json:
        sys.stdout.write(json.dumps(tokens, indent=2) + "\n")
        return
    table = Table("id", "user", "state", "label", "created", "expires", "last used", box=None, pad_edge=False)
    for token in tokens:
        user_cell = token["user"] + (" (admin)" if token["admin"] else "")
        table.add_row(*(escape(str(value)) for value in (token["id"], user_cell, token["state"], token["label"] or "",
                      token["created_at"][:16], (token["expires_at"] or "never")[:16],
                      (token["last_used_at"] or "never")[:16])))  # fmt: skip
    console.print(table)


@token_app.command("revoke")
def token_revoke(
    ids: Annotated[list[int] | None, typer.Argument(help="Token ids (from `overnight token list`).")] = None,
    user: Annotated[str | None, typer.Option(help="Revoke every token of this user.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Revoke tokens by id, or all of a user's: the API refuses them (401) from the next request on."""
    from overnight.admin.tokens import revoke_tokens

    if not ids and user is None:
        err.print("[red]error:[/red] name token ids or --user")
        raise typer.Exit(2)
    revoked, unknown = revoke_tokens(ids=ids or [], user=user)
    if as_json:
        sys.stdout.write(json.dumps({"revoked": revoked, "unknown": unknown}) + "\n")
    else:
        err.print(f"revoked: {', '.join(map(str, revoked)) or 'nothing (revoked before, or no such token)'}")
        if unknown:
            err.print(f"[red]error:[/red] no token with id {', '.join(map(str, unknown))}")
    raise typer.Exit(2 if unknown else 0)


@secrets_app.command("new-key")
def secrets_new_key() -> None:
    """Print a new key for OVERNIGHT_SECRETS_KEY (the first key seals; older ones after it still open)."""
    from overnight.admin.secrets import print_new_key

    print_new_key()


@secrets_app.command("rotate")
def secrets_rotate(as_json: JsonFlag = False) -> None:
    """Re-seal every stored secret under the first key, so that the older keys can be dropped."""
    from overnight.admin.secrets import rotate

    raise typer.Exit(rotate(as_json=as_json, say=err.print))


@app.command(rich_help_panel=SERVER)
def migrate(as_json: JsonFlag = False) -> None:
    """Bring the database schema to the newest revision (server side; `overnight up` does it too)."""
    from overnight.admin.migrate import run_migrate

    run_migrate(as_json=as_json, say=err.print)


@app.command(rich_help_panel=SERVER)
def doctor(as_json: JsonFlag = False) -> None:
    """Check that this server is set up the way tasks need (server side); non-zero exit on any failure."""
    from overnight.admin.doctor import run_doctor

    raise typer.Exit(run_doctor(as_json=as_json, say=err.print))


@bench_app.command("llm")
def bench_llm(
    base_url: Annotated[str, typer.Option(help="OpenAI-compatible base URL (…/v1).")],
    model: Annotated[str, typer.Option(help="Served model name.")] = "mistral-medium-3.5",
    api_key: Annotated[str | None, typer.Option(envvar="OVERNIGHT_LLM_API_KEY", help="Bearer key.")] = None,
    compare: Annotated[
        list[str] | None,
        typer.Option(
            help="Another base URL to measure in the same run, side by side (repeat it: EAGLE, suffix, none)."
        ),
    ] = None,
    concurrency: Annotated[str, typer.Option(help="Comma-separated concurrency levels.")] = "1,4,16,64",
    steps: Annotated[int, typer.Option(help="Requests of the trajectory each session replays.")] = 40,
    max_tokens: Annotated[int, typer.Option(help="max_tokens of each request.")] = 1024,
    output: Annotated[str, typer.Option("--output", "-o", help="JSON file for the results.")] = "bench-llm.json",
    trajectory: Annotated[
        str | None,
        typer.Option(
            help="A task's stored trajectory (JSON of GET /v1/tasks/ID/trajectory) to replay instead of "
            "the built-in example session."
        ),
    ] = None,
) -> None:
    """Time to first token, tokens/s, EAGLE acceptance and prefix-cache hit rate on an agent's trajectory."""
    from overnight.admin.benchllm import run_bench

    run_bench(base_url=base_url, model=model, api_key=api_key, compare=compare, concurrency=concurrency, steps=steps,
              max_tokens=max_tokens, output=output, trajectory=trajectory, say=err.print)  # fmt: skip


@app.command(
    "eval",
    rich_help_panel=SERVER,
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def eval_(ctx: typer.Context) -> None:
    """Solve rate on SWE-bench-format instances, run as tasks and graded in sandboxes (`eval compare A B`)."""
    from overnight.admin.eval.command import main as eval_main

    raise typer.Exit(eval_main(ctx.args))


def main() -> None:
    """The ``overnight`` command. Known failures end in a one-line error (exit 2 or 3) where they happen; this is
    the last line of defence, so that nothing else ends in a traceback either: one line naming the exception,
    exit 4 (a database the server commands cannot reach, a bug)."""
    try:
        app()
    except Exception as exc:
        message = " ".join(str(exc).split()) or "(no message)"
        err.print(f"[red]error:[/red] unexpected {type(exc).__name__}: {escape(message)}")
        raise SystemExit(4) from None

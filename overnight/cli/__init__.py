"""The ``overnight`` command line. Client commands (``overnight.cli.commands``) speak HTTP only; server
commands (up, token, image) import the server side only when they run, so that the client starts fast."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer
from rich.markup import escape

from overnight.cli.commands import err, register

app = typer.Typer(
    help="Overnight: file a coding task, come back to a PR-ready patch.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
SERVER = "Server (run on the Overnight host)"
register(app)
image_app = typer.Typer(help="The sandbox base image.", no_args_is_help=True)
app.add_typer(image_app, name="image", rich_help_panel=SERVER)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
app.add_typer(token_app, name="token", rich_help_panel=SERVER)
bench_app = typer.Typer(help="Benchmarks (for the model host).", no_args_is_help=True)
app.add_typer(bench_app, name="bench", rich_help_panel=SERVER)
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON.")]


@app.command(rich_help_panel=SERVER)
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

    from overnight.cli.server import build_image

    source = (Path(dockerfile), Path(context)) if dockerfile else None
    raise typer.Exit(build_image(name=name, force=force, check=check, say=err.print, dockerfile=source))


@app.command(rich_help_panel=SERVER)
def firewall(
    watch: Annotated[float, typer.Option(min=0, help="Re-apply every this many seconds (0: once).")] = 0,
    check: Annotated[bool, typer.Option(help="Only say whether it is in place (exit 1 if not).")] = False,
) -> None:
    """Install the set-up network's firewall where the Docker engine runs (SANDBOX_SETUP_FIREWALL=external)."""
    from overnight.cli.firewall import run_firewall

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
    from overnight.cli.tokens import create_token

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

    from overnight.cli.commands import console
    from overnight.cli.tokens import list_tokens

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
    from overnight.cli.tokens import revoke_tokens

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


@app.command(rich_help_panel=SERVER)
def migrate(as_json: JsonFlag = False) -> None:
    """Bring the database schema to the newest revision (server side; `overnight up` does it too)."""
    from overnight.broker import redact
    from overnight.settings import Settings
    from store.engine import make_engine
    from store.engine import migrate as upgrade

    url = Settings().resolved_database_url
    upgrade(make_engine(url))
    if as_json:
        sys.stdout.write(json.dumps({"database": redact(url), "migrated": True}) + "\n")
    else:
        err.print(f"{redact(url)}: migrated")


@app.command(rich_help_panel=SERVER)
def doctor(as_json: JsonFlag = False) -> None:
    """Check that this server is set up the way tasks need (server side); non-zero exit on any failure."""
    from dataclasses import asdict

    from overnight.cli.doctor import run_checks
    from overnight.settings import Settings

    checks = run_checks(Settings())
    if as_json:
        sys.stdout.write(json.dumps([asdict(check) for check in checks], indent=2) + "\n")
    for check in checks if not as_json else []:
        mark = "[green]PASS[/green]" if check.ok else "[red]FAIL[/red]"
        err.print(f"{mark} {check.name}: {check.detail}")
        if not check.ok:
            err.print(f"     fix: {check.fix}")
    raise typer.Exit(0 if all(check.ok for check in checks) else 1)


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
    import json
    from pathlib import Path

    from rich.table import Table

    from overnight.cli.benchllm import measure

    levels = [int(level) for level in concurrency.split(",") if level.strip()]
    recorded = None
    if trajectory is not None:
        try:
            recorded = json.loads(Path(trajectory).read_text())
        except (OSError, ValueError) as exc:
            raise typer.BadParameter(f"cannot read the trajectory {trajectory}: {exc}") from exc
    report = {}
    for url in [base_url, *(compare or [])]:
        try:
            report[url] = measure(url, model, api_key=api_key, levels=levels, sessions_steps=steps,
                                  max_tokens=max_tokens, trajectory=recorded)  # fmt: skip
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from exc
    table = Table("endpoint", "conc.", "TTFT ms", "tok/s/req", "tok/s total", "accept len", "accept rate",
                  "prefix hit")  # fmt: skip

    def show(value: float | None, spec: str) -> str:
        return "—" if value is None else format(value, spec)

    for url, rows in report.items():
        for row in rows:
            table.add_row(url, str(row["concurrency"]), show(row["ttft_ms_median"], ".0f"),
                          show(row["tokens_per_s_per_request"], ".1f"), show(row["tokens_per_s_total"], ".1f"),
                          show(row["mean_acceptance_length"], ".2f"), show(row["draft_acceptance_rate"], ".0%"),
                          show(row["prefix_cache_hit_rate"], ".0%"))  # fmt: skip
    err.print(table)
    with open(output, "w") as handle:
        json.dump(report, handle, indent=2)
    err.print(f"results in {output}")


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

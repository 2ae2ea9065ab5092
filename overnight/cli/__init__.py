"""The ``overnight`` command line. Client commands (``overnight.cli.commands``) speak HTTP only; server
commands (up, token, image) import the server side only when they run, so that the client starts fast."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from overnight.cli.commands import err, register

app = typer.Typer(
    help="Overnight: file a coding task, come back to a PR-ready patch.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
image_app = typer.Typer(help="The sandbox base image (server side).", no_args_is_help=True)
app.add_typer(image_app, name="image")
token_app = typer.Typer(help="API tokens (server side).", no_args_is_help=True)
app.add_typer(token_app, name="token")
register(app)


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

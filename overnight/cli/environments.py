"""``overnight env``: environments (per repository pattern: set-up script, variables, secrets, network
policies) through the API. A secret's value is read from standard input, a hidden prompt or a file — never
from the command line, where the shell's history and the process list would keep it — and never printed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

import typer
from rich.markup import escape

from overnight.cli.commands import JsonOption, _client, _print_json, console, err, fail
from overnight.cli.errors import ClientError

env_app = typer.Typer(
    help="Environments: per repository pattern, the set-up script, variables, secrets and network policies.",
    no_args_is_help=True,
)
secret_app = typer.Typer(help="An environment's secrets (given to the set-up only; write-only).", no_args_is_help=True)
env_app.add_typer(secret_app, name="secret")
ENVIRONMENT: dict[str, type] = {"id": int, "pattern": str, "variables": dict, "secrets": list, "owners": list}
Pattern = Annotated[str, typer.Argument(help="Repository pattern: *, a local path, or an address (wildcards: * ? []).")]
SecretName = Annotated[str, typer.Argument(help="The variable name the set-up sees it under.")]


def _environment(pattern: str) -> dict[str, Any]:
    """The environment of ``pattern`` (exit 2 when there is none you manage)."""
    client = _client()
    response = client.request("GET", "/v1/environments", params={"pattern": pattern})
    found = client._items(response, "environments", ENVIRONMENT)
    if not found:
        raise ClientError(f"no environment for {pattern} (or not one you manage)", exit_code=2)
    return found[0]


@env_app.command("list")
def list_(as_json: JsonOption = False) -> None:
    """The environments you manage (every one for an admin)."""
    from rich.table import Table

    try:
        client = _client()
        found = client._items(client.request("GET", "/v1/environments"), "environments", ENVIRONMENT)
    except ClientError as exc:
        raise fail(str(exc), exc.exit_code) from exc
    if as_json:
        _print_json(found)
        return
    if not found:
        err.print("no environments (none you manage)")
        return
    table = Table("pattern", "script", "variables", "secrets", "set-up net", "agent net", box=None, pad_edge=False)
    for env in found:
        table.add_row(escape(env["pattern"]), "override" if env.get("setup_script") else "-",
                      str(len(env["variables"])), str(len(env["secrets"])), _policy(env.get("setup_network")),
                      _policy(env.get("agent_network")))  # fmt: skip
    console.print(table)


@env_app.command("show")
def show(pattern: Pattern, as_json: JsonOption = False) -> None:
    """An environment: its script, variables, the names of its secrets, its network policies and owners."""
    try:
        env = _environment(pattern)
    except ClientError as exc:
        raise fail(str(exc), exc.exit_code) from exc
    if as_json:
        _print_json(env)
        return
    _print_environment(env)


def _print_environment(env: dict[str, Any]) -> None:
    say = console.print
    say(f"environment {env['id']}: [bold]{escape(env['pattern'])}[/bold]")
    say(f"owners: {escape(', '.join(env['owners']) or '(admins only)')}")
    say(f"set-up network: {escape(_policy(env.get('setup_network')))}")
    say(f"agent network: {escape(_policy(env.get('agent_network')))}")
    say("variables:" + ("" if env["variables"] else " none"))
    for name, value in sorted(env["variables"].items()):
        say(f"  {escape(name)}={escape(str(value))}", highlight=False)
    say("secrets:" + ("" if env["secrets"] else " none"))
    for secret in env["secrets"]:
        say(f"  {escape(str(secret.get('name')))} (set {escape(str(secret.get('updated_at', ''))[:16])})")
    script = env.get("setup_script")
    say("set-up script: " + ("the repository's (or the automatic set-up)" if not script else "this override:"))
    if script:
        console.print(script, markup=False, highlight=False)


def _policy(policy: Any) -> str:
    if not isinstance(policy, dict):
        return "?"
    if policy.get("mode") != "allowlist":
        return str(policy.get("mode"))
    methods = " (GET/HEAD only)" if policy.get("read_only") else ""
    return f"allowlist{methods}: {', '.join(map(str, policy.get('domains', [])))}"


def _network(mode: str | None, domains: list[str] | None, read_only: bool, what: str) -> dict[str, Any] | None:
    if mode is None:
        if domains or read_only:
            raise ClientError(f"--{what}-allow and --{what}-read-only go with --{what}-network allowlist", exit_code=2)
        return None
    if mode != "allowlist":
        if domains or read_only:
            raise ClientError(f"--{what}-network {mode} takes no domains", exit_code=2)
        return {"mode": mode}
    return {"mode": "allowlist", "domains": domains or [], "read_only": read_only}


def _variables(assignments: list[str], removals: list[str]) -> dict[str, str | None]:
    variables: dict[str, str | None] = {}
    for item in assignments:
        name, sep, value = item.partition("=")
        if not sep:
            raise ClientError(f"--var {item.split('=')[0]!r}: write NAME=VALUE", exit_code=2)
        variables[name] = value
    variables.update(dict.fromkeys(removals))
    return variables


Mode = Annotated[Literal["none", "allowlist", "full"] | None, typer.Option(help="The policy.")]
Domains = Annotated[list[str] | None, typer.Option(help="An allowed host or *.domain (repeat it).")]


@env_app.command("set")
def set_(
    pattern: Pattern,
    script: Annotated[
        Path | None, typer.Option(help="A file whose text runs instead of the repository's set-up.")
    ] = None,
    no_script: Annotated[bool, typer.Option("--no-script", help="Remove the set-up script override.")] = False,
    var: Annotated[list[str] | None, typer.Option(help="NAME=VALUE for set-up and agent (repeat it).")] = None,
    unset: Annotated[list[str] | None, typer.Option(help="Remove this variable (repeat it).")] = None,
    setup_network: Mode = None,
    setup_allow: Domains = None,
    setup_read_only: Annotated[bool, typer.Option("--setup-read-only", help="Allowlist: only GET and HEAD.")] = False,
    agent_network: Mode = None,
    agent_allow: Domains = None,
    agent_read_only: Annotated[bool, typer.Option("--agent-read-only", help="Allowlist: only GET and HEAD.")] = False,
    owner: Annotated[list[str] | None, typer.Option(help="Admins: a user who may manage it (repeat it).")] = None,
    no_owners: Annotated[bool, typer.Option("--no-owners", help="Admins: nobody but admins manages it.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Create an environment (admins) or change one (admins, its owners); what is not named stays as it was."""
    body: dict[str, Any] = {"pattern": pattern}
    try:
        if script is not None and no_script:
            raise ClientError("--script and --no-script exclude each other", exit_code=2)
        if script is not None:
            body["setup_script"] = _read_text(script)
        elif no_script:
            body["setup_script"] = None
        if var or unset:
            body["variables"] = _variables(var or [], unset or [])
        for what, policy in (("setup", _network(setup_network, setup_allow, setup_read_only, "setup")),
                             ("agent", _network(agent_network, agent_allow, agent_read_only, "agent"))):  # fmt: skip
            if policy is not None:
                body[f"{what}_network"] = policy
        if owner or no_owners:
            body["owners"] = [] if no_owners else owner
        client = _client()
        env = client._json(client.request("POST", "/v1/environments", json=body), ENVIRONMENT)
    except ClientError as exc:
        raise fail(str(exc), exc.exit_code) from exc
    _print_json(env) if as_json else _print_environment(env)


def _read_text(path: Path) -> str:
    try:
        return path.read_text() if str(path) != "-" else sys.stdin.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientError(f"cannot read {path}: {exc}", exit_code=2) from exc


def _secret_value(from_file: Path | None) -> str:
    """The value from the file, else standard input (one trailing newline dropped), else a hidden prompt."""
    if from_file is not None:
        return _read_text(from_file)
    if not sys.stdin.isatty():
        value = sys.stdin.read()
        return value.removesuffix("\n").removesuffix("\r")
    return str(typer.prompt("value (not echoed)", hide_input=True, err=True))


@secret_app.command("set")
def secret_set(
    pattern: Pattern,
    name: SecretName,
    from_file: Annotated[Path | None, typer.Option(help="Read the value from this file, as it is.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Set a secret: the value comes from standard input, a hidden prompt or --from-file, never an argument."""
    try:
        env = _environment(pattern)
        value = _secret_value(from_file)
        if not value:
            raise ClientError("the value is empty", exit_code=2)
        client = _client()
        answer = client._json(client.request("PUT", f"/v1/environments/{env['id']}/secrets/{quote(name, safe='')}",
                                             json={"value": value}), {"name": str})  # fmt: skip
    except ClientError as exc:
        raise fail(str(exc), exc.exit_code) from exc
    _print_json(answer) if as_json else err.print(f"secret {escape(answer['name'])} set for {escape(env['pattern'])}")


@secret_app.command("rm")
def secret_rm(pattern: Pattern, name: SecretName, as_json: JsonOption = False) -> None:
    """Remove a secret."""
    try:
        env = _environment(pattern)
        _client().request("DELETE", f"/v1/environments/{env['id']}/secrets/{quote(name, safe='')}")
    except ClientError as exc:
        raise fail(str(exc), exc.exit_code) from exc
    if as_json:
        _print_json({"removed": name, "pattern": env["pattern"]})
    else:
        err.print(f"secret {escape(name)} removed from {escape(env['pattern'])}")

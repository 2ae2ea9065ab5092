"""The environments' pages (issue 18): the list of those the visitor manages, and one environment — its pattern,
set-up script, variables, the names of its secrets and its network policies in words — with forms to change
them.

They see what the API lets the same user see: an admin every environment, an owner those naming them, anyone else
none (another's environment is "not found", by list and by address alike, as the API answers 404). Every change
goes through the API itself (``/v1/environments``), from the page's script, with the session cookie and its CSRF
token. A secret's value is never read here: only its name and when it was set.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from pydantic import ValidationError

import store.environments
from overnight.environments import (
    DEFAULT_AGENT_NETWORK,
    DEFAULT_SETUP_NETWORK,
    AllowlistNetwork,
    Policy,
    describe_policy,
    stored_policy,
)
from store.models import Environment
from web.pages import WebSessionDep, WebStateDep, render

router = APIRouter(include_in_schema=False)
MAX_ID = 2**31 - 1


@dataclass(frozen=True, kw_only=True)
class PolicyView:
    field: str
    """``setup_network`` or ``agent_network``: the API's name for it."""
    label: str
    policy: Policy | None
    """None: the stored policy does not parse (``overnight doctor`` names it); the form sets it again."""
    text: str

    @property
    def mode(self) -> str:
        return self.policy.mode if self.policy is not None else ""

    @property
    def domains(self) -> str:
        return "\n".join(self.policy.domains) if isinstance(self.policy, AllowlistNetwork) else ""

    @property
    def read_only(self) -> bool:
        return isinstance(self.policy, AllowlistNetwork) and self.policy.read_only


@dataclass(frozen=True, kw_only=True)
class SecretView:
    name: str
    updated_at: datetime


@dataclass(frozen=True, kw_only=True)
class EnvironmentView:
    id: int
    pattern: str
    setup_script: str | None
    variables: list[tuple[str, str]]
    secrets: list[SecretView]
    policies: list[PolicyView]
    owners: list[str]
    updated_at: datetime


def _policy(field: str, label: str, data: dict[str, object] | None, default: Policy) -> PolicyView:
    try:
        policy: Policy | None = stored_policy(data, default)
    except (ValidationError, ValueError):
        policy = None
    text = describe_policy(policy) if policy is not None else "stored policy cannot be read; set it again"
    return PolicyView(field=field, label=label, policy=policy, text=text)


def environment_view(row: Environment) -> EnvironmentView:
    """What the pages show of an environment: everything but its secrets' values, which are never read."""
    return EnvironmentView(
        id=row.id,
        pattern=row.pattern,
        setup_script=row.setup_script,
        variables=sorted((row.variables or {}).items()),
        secrets=[SecretView(name=secret.name, updated_at=secret.updated_at) for secret in row.secrets],
        policies=[
            _policy("setup_network", "Set-up", row.setup_network, DEFAULT_SETUP_NETWORK),
            _policy("agent_network", "Agent", row.agent_network, DEFAULT_AGENT_NETWORK),
        ],
        owners=sorted(row.owners or []),
        updated_at=row.updated_at,
    )


@router.get("/environments", response_class=HTMLResponse)
def environment_list(request: Request, web: WebSessionDep, app: WebStateDep) -> HTMLResponse:
    with app.sessions() as session:
        rows = store.environments.list_environments(session, user=web.user)
        views = [environment_view(row) for row in rows]
    return render(request, "environments.html", {"environments": views}, web=web)


@router.get("/environments/{environment_id}", response_class=HTMLResponse)
def environment_page(request: Request, environment_id: str, web: WebSessionDep, app: WebStateDep) -> HTMLResponse:
    number = int(environment_id) if environment_id.isascii() and environment_id.isdigit() else 0
    with app.sessions() as session:
        row = store.environments.get_environment(session, number, user=web.user) if 1 <= number <= MAX_ID else None
        if row is None:
            context = {"environment_id": environment_id}
            return render(request, "environment_not_found.html", context, web=web, status_code=404)
        view = environment_view(row)
    return render(request, "environment.html", {"env": view}, web=web)

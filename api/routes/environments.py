"""Environments: list, show, set (create or change), and their secrets (set, remove). Secrets are write-only:
no answer ever holds a value, only names. Admins manage every environment and create them; the users an admin
names as its owners manage one (but not its owners)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Response, status
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

import store.environments
from api.deps import CurrentUser, SessionDep, SettingsDep, reject_unknown_query
from api.errors import APIError
from api.schemas import ErrorResponse
from overnight.environments import (
    DEFAULT_AGENT_NETWORK,
    DEFAULT_SETUP_NETWORK,
    MAX_PATTERN_LENGTH,
    MAX_SCRIPT_BYTES,
    MAX_SECRETS,
    MAX_VALUE_BYTES,
    MAX_VARIABLES,
    NetworkPolicy,
    check_name,
    check_script,
    check_secret,
    check_value,
    names_in_use,
    pattern_key,
    stored_policy,
)
from overnight.secrets import SecretsUnavailable
from store.models import Environment, User

router = APIRouter(prefix="/v1/environments", tags=["environments"], dependencies=[Depends(reject_unknown_query)])
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "A body that is not JSON."},
    401: {"model": ErrorResponse, "description": "Missing or invalid bearer token."},
    404: {"model": ErrorResponse, "description": "No such environment (or not one you manage)."},
    413: {"model": ErrorResponse, "description": "A body over OVERNIGHT_API_MAX_BODY_BYTES."},
    422: {"model": ErrorResponse, "description": "Invalid input."},
}
FORBIDDEN: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorResponse, "description": "Only admins create environments and name owners."}
}
NO_KEY: dict[int | str, dict[str, Any]] = {
    503: {"model": ErrorResponse, "description": "The server has no secrets key (OVERNIGHT_SECRETS_KEY)."}
}
Name = Annotated[str, Field(max_length=128), AfterValidator(check_name)]
Value = Annotated[str, Field(max_length=MAX_VALUE_BYTES), AfterValidator(check_value)]
Script = Annotated[str, Field(max_length=MAX_SCRIPT_BYTES), AfterValidator(check_script)]
UserName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\s]+$")]
EnvironmentId = Annotated[int, Path(ge=1, le=2**31 - 1, description="The environment's id.")]
SecretName = Annotated[str, Path(max_length=128, description="A shell variable name.")]


class EnvironmentSet(BaseModel):
    """What to set; a field left out keeps its value."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"pattern": "https://github.com/acme/*", "variables": {"CI": "1"}}]},
    )

    pattern: str = Field(max_length=MAX_PATTERN_LENGTH, description="*, a local path, or an address with wildcards.")
    setup_script: Script | None = Field(default=None, description="Run instead of the repository's set-up; null: none.")
    variables: dict[Name, Value | None] | None = Field(
        default=None, description="Merged into the variables; a null value removes that one."
    )
    setup_network: NetworkPolicy | None = None
    agent_network: NetworkPolicy | None = None
    owners: list[UserName] | None = Field(default=None, max_length=100, description="Admins only: who else manages it.")


class SecretSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    value: Annotated[str, Field(max_length=MAX_VALUE_BYTES), AfterValidator(check_secret)]


class SecretPublic(BaseModel):
    name: str
    updated_at: datetime


class EnvironmentPublic(BaseModel):
    id: int
    pattern: str
    setup_script: str | None
    variables: dict[str, str]
    secrets: list[SecretPublic] = Field(description="Names only: a secret's value is never sent back.")
    setup_network: NetworkPolicy
    agent_network: NetworkPolicy
    owners: list[str]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: Environment) -> EnvironmentPublic:
        return cls(
            id=row.id, pattern=row.pattern, setup_script=row.setup_script, variables=row.variables or {},
            secrets=[SecretPublic(name=secret.name, updated_at=secret.updated_at) for secret in row.secrets],
            setup_network=stored_policy(row.setup_network, DEFAULT_SETUP_NETWORK), owners=row.owners or [],
            agent_network=stored_policy(row.agent_network, DEFAULT_AGENT_NETWORK), created_at=row.created_at,
            updated_at=row.updated_at,
        )  # fmt: skip


class EnvironmentList(BaseModel):
    environments: list[EnvironmentPublic]


def _pattern(value: str) -> str:
    try:
        return pattern_key(value)
    except ValueError as exc:
        raise APIError(422, "invalid_pattern", str(exc), [{"field": "pattern", "message": str(exc)}]) from exc


def _managed_or_404(session: SessionDep, environment_id: int, user: User) -> Environment:
    environment = store.environments.get_environment(session, environment_id, user=user)
    if environment is None:
        raise APIError(404, "environment_not_found", f"no environment {environment_id}")
    return environment


@router.get("", response_model=EnvironmentList, responses=ERRORS)
def list_environments(
    session: SessionDep,
    user: CurrentUser,
    pattern: Annotated[str | None, Query(max_length=MAX_PATTERN_LENGTH, description="Only this pattern's.")] = None,
) -> EnvironmentList:
    """The environments you manage (all of them for an admin)."""
    rows = store.environments.list_environments(session, user=user, pattern=_pattern(pattern) if pattern else None)
    return EnvironmentList(environments=[EnvironmentPublic.of(row) for row in rows])


@router.get("/{environment_id}", response_model=EnvironmentPublic, responses=ERRORS)
def show_environment(environment_id: EnvironmentId, session: SessionDep, user: CurrentUser) -> EnvironmentPublic:
    return EnvironmentPublic.of(_managed_or_404(session, environment_id, user))


@router.post(
    "",
    response_model=EnvironmentPublic,
    responses={**ERRORS, **FORBIDDEN, 201: {"model": EnvironmentPublic, "description": "Created."}},
)
def set_environment(
    body: EnvironmentSet, session: SessionDep, user: CurrentUser, response: Response
) -> EnvironmentPublic:
    """Create the environment of ``pattern`` (admins) or change it (admins, its owners): only the fields given."""
    pattern = _pattern(body.pattern)
    environment = store.environments.environment_by_pattern(session, pattern)
    # The same answer whether or not it exists: its existence is not a non-owner's to learn.
    if (environment is None or not store.environments.may_manage(environment, user)) and not user.is_admin:
        raise APIError(403, "environment_forbidden", "only admins create environments; their owners change them")
    if "owners" in body.model_fields_set and not user.is_admin:
        raise APIError(403, "environment_forbidden", "only admins name an environment's owners")
    changes = {field: getattr(body, field) for field in body.model_fields_set - {"pattern"}}
    for policy in ("setup_network", "agent_network"):
        if policy in changes:
            changes[policy] = changes[policy].model_dump() if changes[policy] is not None else {}
    if "owners" in changes:
        changes["owners"] = sorted(set(changes["owners"] or []))
    if changes.get("variables") is None:
        changes.pop("variables", None)
    created = environment is None
    environment = environment or store.environments.create_environment(session, pattern)
    store.environments.update_environment(environment, changes)
    _check_names(environment)
    session.commit()
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return EnvironmentPublic.of(environment)


def _check_names(environment: Environment) -> None:
    variables = list(environment.variables or {})
    if len(variables) > MAX_VARIABLES:
        raise APIError(422, "too_many_variables", f"an environment holds at most {MAX_VARIABLES} variables")
    if clash := names_in_use(variables, [secret.name for secret in environment.secrets]):
        raise APIError(422, "name_in_use", f"{', '.join(clash)}: already a secret of this environment; a name is "
                       "either a variable or a secret")  # fmt: skip


def _secret_name(name: str) -> str:
    try:
        return check_name(name)
    except ValueError as exc:
        raise APIError(422, "invalid_name", str(exc), [{"field": "name", "message": str(exc)}]) from exc


@router.put(
    "/{environment_id}/secrets/{name}",
    response_model=SecretPublic,
    responses={**ERRORS, **NO_KEY, 201: {"model": SecretPublic, "description": "Created."}},
)
def set_secret(
    environment_id: EnvironmentId,
    name: SecretName,
    body: SecretSet,
    session: SessionDep,
    settings: SettingsDep,
    user: CurrentUser,
    response: Response,
) -> SecretPublic:
    """Seal ``value`` with the server key and keep it as ``name`` (given to the set-up only; never sent back)."""
    name = _secret_name(name)
    environment = _managed_or_404(session, environment_id, user)
    if name in (environment.variables or {}):
        raise APIError(422, "name_in_use", f"{name}: already a variable of this environment")
    if len(environment.secrets) >= MAX_SECRETS and name not in {secret.name for secret in environment.secrets}:
        raise APIError(422, "too_many_secrets", f"an environment holds at most {MAX_SECRETS} secrets")
    try:
        sealed = settings.secrets.box().seal(body.value, pattern=environment.pattern, name=name)
    except SecretsUnavailable as exc:
        raise APIError(503, "secrets_unavailable", str(exc)) from exc
    row, created = store.environments.set_secret(session, environment, name, sealed)
    session.commit()
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    return SecretPublic(name=row.name, updated_at=row.updated_at)


@router.delete("/{environment_id}/secrets/{name}", status_code=status.HTTP_204_NO_CONTENT, responses=ERRORS)
def remove_secret(environment_id: EnvironmentId, name: SecretName, session: SessionDep, user: CurrentUser) -> Response:
    name = _secret_name(name)
    environment = _managed_or_404(session, environment_id, user)
    if not store.environments.remove_secret(session, environment, name):
        raise APIError(404, "secret_not_found", f"environment {environment_id} has no secret {name}")
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)

"""A schemathesis pass over the OpenAPI schema: every operation, with generated valid and invalid inputs,
must answer as its schema says (no 5xx, documented status codes, documented bodies, one error shape)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings

import store.users
from api.app import create_app
from overnight.settings import Settings
from store.engine import make_engine, make_sessionmaker, migrate
from tests.conftest import REDIS_URL

TOKEN: dict[str, str] = {}


@pytest.fixture(scope="module")
def api_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FastAPI]:
    queue = f"test-fuzz-{secrets.token_hex(4)}"
    config = Settings(data_dir=tmp_path_factory.mktemp("fuzz"), broker_url=REDIS_URL, queue=queue,
                      allow_local_repos=False)  # fmt: skip
    engine = make_engine(config.resolved_database_url)
    migrate(engine)
    with make_sessionmaker(engine).begin() as session:
        TOKEN["value"] = store.users.create_token(session, "fuzzer")
    yield create_app(config)
    redis.Redis.from_url(REDIS_URL).delete(queue)


@pytest.fixture(scope="module")
def api_schema(api_app: FastAPI) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_asgi("/openapi.json", api_app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_every_operation_answers_as_documented(case: schemathesis.Case) -> None:
    # Every check runs but "schema-valid data must be accepted": repository addresses, refs and cursors are
    # checked beyond what JSON Schema says (a well-formed https URL with no path, a cursor this API never
    # made), and refusing them with 422 and a reason is the intended behaviour.
    case.call_and_validate(
        headers={"Authorization": f"Bearer {TOKEN['value']}"},
        excluded_checks=[schemathesis.checks.positive_data_acceptance],
    )


def test_the_schema_documents_errors_and_security(api_app: FastAPI) -> None:
    document = api_app.openapi()
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    create = document["paths"]["/v1/tasks"]["post"]
    assert {"201", "401", "422", "503"} <= set(create["responses"])
    assert create["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/TaskCreate")
    error = document["components"]["schemas"]["ErrorResponse"]
    assert error["properties"]["error"]["$ref"].endswith("/ErrorBody")
    assert Path(__file__).exists()

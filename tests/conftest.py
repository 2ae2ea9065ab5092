"""Fixtures: real PostgreSQL, Redis and Docker; the scripted model server is the one double."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import docker.errors
import pytest
import redis
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from agent.scripted import ScriptedModel, ScriptedModelServer
from overnight.settings import default_data_dir
from sandbox.base import SandboxBackend
from sandbox.bwrap import BwrapBackend, BwrapConfig
from sandbox.disk import remove_folder
from sandbox.docker import DockerBackend, DockerConfig
from sandbox.image import DEFAULT_IMAGE, image_present, rootfs_complete, rootfs_path
from store.engine import make_engine, migrate
from tests.mistral_validation import assert_valid_mistral_request

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379/0"
SANDBOX_IMAGE = DEFAULT_IMAGE
TEST_LIMITS = {
    "memory": "512m",
    "pids": 256,
    "cpus": 1,
    "command_timeout": 60,
    "disk_limit": 200 * 2**20,
    "tmp_size": "64m",
    "home_size": "64m",
}


@pytest.fixture(scope="session")
def postgres_engine() -> Iterator[Engine]:
    """A migrated schema of its own in the machine's PostgreSQL, dropped at the end of the run."""
    schema = f"t_{secrets.token_hex(4)}"
    admin = make_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    engine = make_engine(POSTGRES_URL, connect_args={"options": f"-csearch_path={schema}"})
    try:
        migrate(engine)
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture(scope="session")
def sqlite_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path_factory.mktemp('db') / 'overnight.db'}")
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest) -> Engine:
    return request.getfixturevalue(f"{request.param}_engine")  # type: ignore[no-any-return]


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    """A session whose work is rolled back at the end, commits included (savepoints)."""
    connection = engine.connect()
    outer = connection.begin()
    db = Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
    try:
        yield db
    finally:
        db.close()
        outer.rollback()
        connection.close()


@pytest.fixture
def scripted_model(request: pytest.FixtureRequest) -> Iterator[ScriptedModelServer]:
    """The scripted vLLM server. Every request it received is checked afterwards with mistral-common's
    validator in serving mode (as vLLM's Mistral tokenizer would), unless the test is marked
    ``not_mistral_validated`` (with the reason)."""
    with ScriptedModelServer(ScriptedModel()) as server:
        yield server
    if request.node.get_closest_marker("not_mistral_validated") is None:
        for number, body in enumerate(server.state.requests, 1):
            try:
                assert_valid_mistral_request(body)
            except Exception as exc:
                pytest.fail(f"request {number} to the scripted model is not valid for Mistral's tokenizer: {exc}")


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    try:
        client = docker.from_env()
        client.ping()
    except docker.errors.DockerException as exc:
        pytest.fail(f"these tests need a Docker engine (bash .ci/run starts one): {exc}")
    if not image_present(client, SANDBOX_IMAGE):
        pytest.fail(f"sandbox image {SANDBOX_IMAGE} missing: run `overnight image build`")
    return client


@pytest.fixture
def docker_backend(docker_client: docker.DockerClient, tmp_path: Path) -> DockerBackend:
    config = DockerConfig(image=SANDBOX_IMAGE, environments=tmp_path / "environments", **TEST_LIMITS)  # type: ignore[arg-type]
    return DockerBackend(config, client=docker_client)


@pytest.fixture(scope="session")
def sandbox_rootfs() -> Path:
    rootfs = rootfs_path(default_data_dir(), SANDBOX_IMAGE)
    if not rootfs_complete(rootfs):
        pytest.fail(f"no sandbox root filesystem at {rootfs}: run `overnight image build`")
    return rootfs


@pytest.fixture
def bwrap_backend(sandbox_rootfs: Path, tmp_path: Path) -> BwrapBackend:
    config = BwrapConfig(rootfs=sandbox_rootfs, environments=tmp_path / "environments", **TEST_LIMITS)  # type: ignore[arg-type]
    return BwrapBackend(config)


@pytest.fixture
def new_workspace(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """``new_workspace(backend, name="ws")``: a workspace the backend made (a disk of its own, as the worker's
    are: a sandbox refuses any other), removed at the end."""
    made: list[Path] = []

    def make(backend: SandboxBackend, name: str = "ws") -> Path:
        path = tmp_path / name
        backend.create_workspace(path)
        made.append(path)
        return path

    try:
        yield make
    finally:
        for path in made:
            remove_folder(path)


@pytest.fixture(params=["docker", "bwrap"])
def backend(request: pytest.FixtureRequest) -> SandboxBackend:
    """Every backend, for the tests all of them must pass."""
    return request.getfixturevalue(f"{request.param}_backend")  # type: ignore[no-any-return]


@pytest.fixture
def redis_url() -> str:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.fail(f"these tests need Redis at {REDIS_URL}: {exc}")
    finally:
        client.close()
    return REDIS_URL


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=Test", "-c", "user.email=test@example.com", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


BUGGY_CALC = "def add(a, b):\n    return a - b\n"
CALC_TEST = (
    "import unittest\n\nfrom calc import add\n\n\n"
    "class AddTest(unittest.TestCase):\n    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n\n\n"
    "if __name__ == '__main__':\n    unittest.main()\n"
)


@pytest.fixture
def buggy_repo(tmp_path: Path) -> Path:
    """A small git repository whose one unit test fails until calc.add is fixed."""
    repo = tmp_path / "calc-repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "calc.py").write_text(BUGGY_CALC)
    (repo / "test_calc.py").write_text(CALC_TEST)
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "calculator with a bug")
    return repo

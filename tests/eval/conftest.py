"""One stack for the eval tests of a module: the sample instance set (bench/evalset.py, built from the registries),
Redis, a SQLite database, two real worker processes with Docker sandboxes, and the scripted model with a script per
instance (tasks run two at a time, so one queue of turns would be dealt out in whatever order they ask). The
tests run the real ``overnight eval`` command against it."""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agent.scripted import ScriptedCall, ScriptedModel, ScriptedModelServer, ScriptedTurn
from bench.evalset import SAMPLE, SETUP_SAMPLE, SampleInstance, build_set
from tests.e2e.cluster import Cluster, database, run_cluster

HOST_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
FINISH = ScriptedTurn(tool_calls=[ScriptedCall(name="finish", arguments={
    "summary": "Done.", "pr_title": "Fix the issue", "pr_body": "Fixed."})])  # fmt: skip


class RoutedModel(ScriptedModel):
    """The scripted model, dealing turns from the script of the instance whose marker (the first line of its
    problem statement) the request's first user message holds."""

    def __init__(self) -> None:
        super().__init__()
        self.routes: dict[str, list[ScriptedTurn]] = {}
        self._route = threading.Lock()

    def next_turn(
        self, body: dict[str, Any], affinity: str | None = None
    ) -> tuple[ScriptedTurn | None, dict[str, int]]:
        first: dict[str, Any] = next((m for m in body.get("messages", []) if m.get("role") == "user"), {})
        text = json.dumps(first.get("content"))
        with self._route:
            marker = next((marker for marker in self.routes if json.dumps(marker)[1:-1] in text), None)
            self.turns = self.routes[marker] if marker is not None else []
            return super().next_turn(body, affinity)


def marker(instance: dict[str, Any]) -> str:
    return str(instance["problem_statement"]).splitlines()[0]


def apply_patch(diff: str) -> ScriptedTurn:
    """A bash call that applies ``diff`` in the workspace (how the scripted model replays a gold fix)."""
    command = f"git apply <<'OVERNIGHT_EOF'\n{diff}OVERNIGHT_EOF\ngit diff --stat"
    return ScriptedTurn(tool_calls=[ScriptedCall(name="bash", arguments={"command": command, "timeout": 60})])


@dataclass(kw_only=True)
class EvalStack:
    cluster: Cluster
    model: RoutedModel
    folder: Path
    instances_file: Path
    instances: list[dict[str, Any]]

    def script(self, scripts: dict[str, list[ScriptedTurn]]) -> None:
        """``scripts`` by instance id."""
        by_id = {instance["instance_id"]: instance for instance in self.instances}
        self.model.routes = {marker(by_id[iid]): list(turns) for iid, turns in scripts.items()}

    def gold(self) -> dict[str, list[ScriptedTurn]]:
        return {i["instance_id"]: [apply_patch(str(i["patch"])), FINISH] for i in self.instances}

    def eval(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        command = ["overnight", "eval", *args]
        if args[:1] != ("compare",):
            command += ["--repos", str(self.folder / "repos")]
        env = self.cluster.env | {"COLUMNS": "200"}
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=self.folder)

    def report(self, name: str) -> dict[str, Any]:
        return dict(json.loads((self.folder / name / "report.json").read_text()))

    def task_count(self) -> int:
        from sqlalchemy import func, select

        from store.models import Task

        with self.cluster.sessions()() as session:
            return int(session.scalar(select(func.count()).select_from(Task)) or 0)


def _stack(folder: Path, samples: list[SampleInstance]) -> Iterator[EvalStack]:
    instances_file = build_set(folder, samples)
    instances = [json.loads(line) for line in instances_file.read_text().splitlines()]
    model = RoutedModel()
    with ScriptedModelServer(model) as server, database("sqlite", folder) as url, \
            contextmanager(run_cluster)(url, folder, server) as cluster:  # fmt: skip
        cluster.env |= {
            "OVERNIGHT_SANDBOX_CA_BUNDLE": str(HOST_BUNDLE),
            "OVERNIGHT_MAX_ACTIVE_TASKS_PER_USER": "2",
            "OVERNIGHT_SANDBOX_SETUP_TIMEOUT": "600",
        }
        cluster.start_worker()
        cluster.start_worker()
        yield EvalStack(cluster=cluster, model=model, folder=folder, instances_file=instances_file,
                        instances=instances)  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EvalStack]:
    """The sample set (three instances, the automatic set-up)."""
    yield from _stack(tmp_path_factory.mktemp("eval"), SAMPLE)


@pytest.fixture(scope="module")
def setup_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EvalStack]:
    """The instances with a set-up of their own (a spec, an environment commit)."""
    yield from _stack(tmp_path_factory.mktemp("eval-setup"), SETUP_SAMPLE)

"""`overnight doctor` against the scripted vLLM server and against broken settings, and `overnight bench llm`
on an agent trajectory, with one endpoint with EAGLE and one without."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from agent.scripted import ScriptedCall, ScriptedModel, ScriptedModelServer, ScriptedTurn
from overnight.admin.doctor_vision import VISION_CHECK
from store.engine import make_engine, migrate
from tests.conftest import REDIS_URL, SANDBOX_IMAGE

PING = ScriptedTurn(reasoning="A probe; call ping.", tool_calls=[ScriptedCall(name="ping", arguments={"ok": True})])


@pytest.fixture
def eagle() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer(ScriptedModel(default=PING)) as server:
        yield server


@pytest.fixture
def no_eagle() -> Iterator[ScriptedModelServer]:
    with ScriptedModelServer(ScriptedModel(default=PING, spec_decode=False)) as server:
        yield server


def doctor(tmp_path: Path, base_url: str, *, migrated: bool = True, **overrides: str) -> tuple[int, dict[str, dict]]:
    database = f"sqlite:///{tmp_path / 'doctor.db'}"
    if migrated:
        migrate(make_engine(database))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OVERNIGHT_")} | {
        "OVERNIGHT_DATA_DIR": str(tmp_path / "data"), "OVERNIGHT_DATABASE_URL": database,
        "OVERNIGHT_BROKER_URL": REDIS_URL, "OVERNIGHT_LLM_BASE_URL": base_url,
        "OVERNIGHT_SANDBOX_IMAGE": SANDBOX_IMAGE, "OVERNIGHT_SANDBOX_BACKEND": "docker", **overrides,
    }  # fmt: skip
    result = subprocess.run(["overnight", "doctor", "--json"], env=env, capture_output=True, text=True, timeout=180)
    return result.returncode, {check["name"]: check for check in json.loads(result.stdout)}


def test_doctor_passes_on_a_server_set_up_as_tasks_need(
    tmp_path: Path, eagle: ScriptedModelServer, docker_client: docker.DockerClient
) -> None:
    code, checks = doctor(tmp_path, eagle.base_url)
    assert code == 0, {name: c for name, c in checks.items() if not c["ok"]}
    assert len(checks) == 16 and all(check["ok"] for check in checks.values())
    assert checks["returns a tool call for a probe request"]["detail"].startswith('ping({"ok": true})')
    assert "prompt tokens cached" in checks["reports cached tokens"]["detail"]
    assert "with a 16x16 image" in checks[VISION_CHECK]["detail"]
    assert checks["environment network policies parse"]["detail"] == "0 environments, every policy parses"
    requests = eagle.state.requests
    assert {body.get("reasoning_effort") for body in requests} == {"high"}
    # One session key for all probes, so the repeated one meets the same replica's prefix cache.
    assert len(set(eagle.state.affinity)) == 1 and eagle.state.affinity[0]


def test_doctor_names_what_is_wrong_and_how_to_fix_it(
    tmp_path: Path, no_eagle: ScriptedModelServer, docker_client: docker.DockerClient
) -> None:
    broken = {
        "OVERNIGHT_LLM_MODEL": "other-model",
        "OVERNIGHT_BROKER_URL": "redis://127.0.0.1:1/0",
        "OVERNIGHT_SANDBOX_IMAGE": "overnight-sandbox:absent",
    }
    code, checks = doctor(tmp_path, no_eagle.base_url, migrated=False, **broken)
    assert code == 1
    failed = {name for name, check in checks.items() if not check["ok"]}
    assert failed == {
        "database reachable and migrated", "broker reachable", "sandbox image present",
        "sandbox backend runs a command", "serves the configured model", "accepts reasoning_effort",
        "returns a tool call for a probe request", "reports cached tokens", "speculative decoding active (EAGLE)",
        "prefix caching active",  # no request was served, so nothing reached the cache either
        VISION_CHECK,
    }  # fmt: skip
    assert checks["database reachable and migrated"]["detail"].endswith("schema at revision None, the code needs 0013")
    assert "--served-model-name" in checks["serves the configured model"]["fix"]
    assert "--speculative-config" in checks["speculative decoding active (EAGLE)"]["fix"]
    code, checks = doctor(tmp_path, "http://127.0.0.1:9/v1")
    assert code == 1 and not checks["model endpoint reachable"]["ok"]
    assert "start the model server" in checks["model endpoint reachable"]["fix"]


def test_doctor_fails_a_server_that_ignores_reasoning_effort(tmp_path: Path, docker_client: docker.DockerClient):
    no_reasoning = ScriptedTurn(tool_calls=[ScriptedCall(name="ping", arguments={"ok": True})])
    with ScriptedModelServer(ScriptedModel(default=no_reasoning)) as server:
        code, checks = doctor(tmp_path, server.base_url)
    assert code == 1
    assert {name for name, check in checks.items() if not check["ok"]} == {"accepts reasoning_effort"}
    assert "no reasoning in the answer" in checks["accepts reasoning_effort"]["detail"]
    assert "--reasoning-parser mistral" in checks["accepts reasoning_effort"]["fix"]


def test_doctor_fails_a_model_server_without_vision_while_tasks_may_carry_images(
    tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    with ScriptedModelServer(ScriptedModel(default=PING, vision=False)) as server:
        code, checks = doctor(tmp_path, server.base_url)
        assert code == 1 and {name for name, check in checks.items() if not check["ok"]} == {VISION_CHECK}
        assert "At most 0 image(s) may be provided in one prompt" in checks[VISION_CHECK]["detail"]
        assert "--language-model-only" in checks[VISION_CHECK]["fix"]
        assert "OVERNIGHT_IMAGES_ENABLED=false" in checks[VISION_CHECK]["fix"]
        code, checks = doctor(tmp_path, server.base_url, OVERNIGHT_IMAGES_ENABLED="false")
    assert code == 0 and VISION_CHECK not in checks  # tasks refuse images: the server need not take them


def test_bench_llm_reports_latency_throughput_acceptance_and_cache_for_two_endpoints(
    tmp_path: Path, eagle: ScriptedModelServer, no_eagle: ScriptedModelServer
) -> None:
    output = tmp_path / "bench.json"
    result = subprocess.run(
        ["overnight", "bench", "llm", "--base-url", eagle.base_url, "--compare", no_eagle.base_url,
         "--concurrency", "1,4", "--steps", "6", "--output", str(output)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(output.read_text())
    with_eagle, without = report[eagle.base_url], report[no_eagle.base_url]
    assert [row["concurrency"] for row in with_eagle] == [1, 4]
    assert [row["requests"] for row in with_eagle] == [6, 24]
    for row in with_eagle:
        assert row["ttft_ms_median"] > 0 and row["tokens_per_s_total"] > 0
        assert row["mean_acceptance_length"] == pytest.approx(2.8, abs=0.05)
        assert row["draft_acceptance_rate"] == pytest.approx(0.6, abs=0.02)
        assert 0 < row["prefix_cache_hit_rate"] < 1
    assert all(row["mean_acceptance_length"] is None for row in without)
    assert "TTFT" in result.stderr and f"results in {output}" in result.stderr
    first = eagle.state.requests[0]
    assert first["stream"] and first["reasoning_effort"] == "high" and first["tools"]
    # Every session keeps one affinity key (6 requests each): 1 + 4 sessions, 5 keys.
    keys = eagle.state.affinity
    assert None not in keys and len(set(keys)) == 5 and all(keys.count(key) == 6 for key in set(keys))

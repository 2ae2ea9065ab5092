"""The deployment files: Kubernetes manifests valid against the API schemas (no cluster runs here), the
compose file's promises (only the worker has the Docker socket, GPUs for vLLM, migrations before the API),
and the vLLM serve command and router configured the way the agent needs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

INFRA = Path(__file__).parents[2] / "infra"
MANIFESTS = sorted((INFRA / "k8s").glob("*.yaml"))


def test_kubernetes_manifests_validate_against_the_api_schemas() -> None:
    result = subprocess.run(["kubernetes-validate", "-k", "1.31.0", "--strict", *map(str, MANIFESTS)],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed for resource") == 16


def _documents() -> list[dict]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_kubernetes_probes_resources_and_secrets() -> None:
    documents = {(d["kind"], d["metadata"]["name"]): d for d in _documents()}
    api = documents[("Deployment", "overnight-api")]["spec"]["template"]["spec"]["containers"][0]
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"secretRef": {"name": "overnight"}} in api["envFrom"]
    for document in documents.values():
        spec = document.get("spec", {}).get("template", {}).get("spec", {})
        for container in spec.get("containers", []):
            assert container.get("resources", {}).get("requests") or container["resources"].get("limits"), document[
                "metadata"
            ]["name"]
    worker = documents[("Deployment", "overnight-worker")]["spec"]["template"]["spec"]
    privileged = [c["name"] for c in worker["containers"] if c.get("securityContext", {}).get("privileged")]
    assert privileged == ["dind"]
    vllm = documents[("StatefulSet", "vllm")]["spec"]["template"]["spec"]["containers"][0]
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert "hash $http_x_session_affinity" in documents[("ConfigMap", "vllm-router")]["data"]["default.conf"]


def test_compose_gives_the_docker_socket_to_the_worker_only() -> None:
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())
    services = compose["services"]
    with_socket = [name for name, s in services.items() if any("docker.sock" in str(v) for v in s.get("volumes", []))]
    assert with_socket == ["worker"]
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["command"] == ["overnight", "migrate"]
    devices = services["vllm"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert services["flower"]["profiles"] == ["monitoring"]
    assert {"redis", "postgres", "api", "worker", "vllm", "router"} <= set(services)
    example = (INFRA / ".env.example").read_text()
    assert "VLLM_API_KEY=" in example and "POSTGRES_PASSWORD=" in example


def test_vllm_serve_command_has_every_flag_the_agent_needs() -> None:
    script = (INFRA / "vllm" / "serve.sh").read_text()
    assert subprocess.run(["bash", "-n", str(INFRA / "vllm" / "serve.sh")]).returncode == 0
    for flag in ("--tokenizer-mode mistral --config-format mistral --load-format mistral",
                 "--enable-auto-tool-choice --tool-call-parser mistral", "--reasoning-parser mistral",
                 "--speculative-config", "--enable-prefix-caching", "--enable-prompt-tokens-details",
                 "--served-model-name", "--tensor-parallel-size", "--max-model-len", "--gpu-memory-utilization",
                 "--api-key"):  # fmt: skip
        assert flag in script, flag
    assert '"method":"eagle"' in script and "Mistral-Medium-3.5-128B-EAGLE" in script
    assert "hash $http_x_session_affinity consistent" in (INFRA / "vllm" / "router.conf").read_text()

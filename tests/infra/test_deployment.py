"""The deployment files: Kubernetes manifests valid against the API schemas (no cluster runs here), their
network policies (who may talk to whom, evaluated here the way the API defines them), the compose file's
promises (only the worker has the Docker socket, GPUs for vLLM, migrations before the API, Redis and Flower
behind passwords, data services on an internal network, the set-up firewall), and the vLLM serve command and
router configured the way the agent needs."""

from __future__ import annotations

import ipaddress
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

INFRA = Path(__file__).parents[2] / "infra"
MANIFESTS = sorted((INFRA / "k8s").glob("*.yaml"))


def test_kubernetes_manifests_validate_against_the_api_schemas() -> None:
    result = subprocess.run(["kubernetes-validate", "-k", "1.31.0", "--strict", *map(str, MANIFESTS)],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed for resource") == 25


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


POD_LABELS = {"api": "overnight-api", "worker": "overnight-worker", "migrate": "overnight-migrate",
              "postgres": "postgres", "redis": "redis", "router": "vllm-router", "vllm": "vllm"}  # fmt: skip
METADATA = ipaddress.ip_address("169.254.169.254")


def _selects(selector: dict[str, Any], app: str) -> bool:
    labels = {"app": app}
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    return all(labels.get(e["key"]) in e["values"] for e in selector.get("matchExpressions", []))  # In only


def _peer_allows(peer: dict[str, Any], app: str | None, address: str | None) -> bool:
    if "podSelector" in peer and "namespaceSelector" not in peer:
        return app is not None and _selects(peer["podSelector"], app)
    if "ipBlock" in peer and address is not None:
        block = peer["ipBlock"]
        ip = ipaddress.ip_address(address)
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(e) for e in block.get("except", [])
        )
    return False


def _rules_allow(rules: list[dict[str, Any]], key: str, app: str | None, address: str | None, port: int) -> bool:
    for rule in rules:
        ports = rule.get("ports")
        if ports and not any(p["port"] == port for p in ports):
            continue
        peers = rule.get(key)
        if not peers or any(_peer_allows(peer, app, address) for peer in peers):
            return True
    return False


def _policies() -> list[dict[str, Any]]:
    return [d for d in _documents() if d["kind"] == "NetworkPolicy"]


def may_connect(source: str, target: str | None, port: int, address: str | None = None) -> bool:
    """Whether pod ``source`` may open ``port`` on pod ``target`` (or on ``address`` outside the cluster)."""
    src, dst = POD_LABELS[source], POD_LABELS[target] if target else None
    egress = [
        p["spec"]
        for p in _policies()
        if "Egress" in p["spec"]["policyTypes"] and _selects(p["spec"]["podSelector"], src)
    ]
    if not egress or not any(_rules_allow(p.get("egress", []), "to", dst, address, port) for p in egress):
        return False
    if dst is None:
        return True
    ingress = [
        p["spec"]
        for p in _policies()
        if "Ingress" in p["spec"]["policyTypes"] and _selects(p["spec"]["podSelector"], dst)
    ]
    return bool(ingress) and any(_rules_allow(p.get("ingress", []), "from", src, None, port) for p in ingress)


def test_kubernetes_network_policies_let_each_pod_talk_only_to_what_it_must() -> None:
    for kind in ("Deployment", "StatefulSet", "Job"):  # every workload's pods are labelled for the policies
        for document in (d for d in _documents() if d["kind"] == kind):
            assert document["spec"]["template"]["metadata"]["labels"]["app"] in POD_LABELS.values()
    allowed = {("api", "postgres", 5432), ("api", "redis", 6379), ("worker", "postgres", 5432),
               ("worker", "redis", 6379), ("worker", "router", 8000), ("migrate", "postgres", 5432),
               ("router", "vllm", 8000)}  # fmt: skip
    for source in POD_LABELS:
        for target, port in (("postgres", 5432), ("redis", 6379), ("router", 8000), ("vllm", 8000),
                             ("api", 8177), ("worker", 2375)):  # fmt: skip
            assert may_connect(source, target, port) == ((source, target, port) in allowed), (source, target)
    assert may_connect("worker", None, 443, "203.0.113.80")  # a registry, GitHub
    assert may_connect("api", None, 443, "203.0.113.80")
    for source in POD_LABELS:  # nobody reaches the metadata address or a private range directly
        for address in (str(METADATA), "10.1.2.3", "172.20.0.1", "192.168.1.1", "100.100.100.200"):
            for port in (80, 443, 5432):
                assert not may_connect(source, None, port, address), (source, address)
    for source in ("postgres", "redis", "migrate", "router"):
        assert not may_connect(source, None, 443, "203.0.113.80"), source


def test_kubernetes_redis_asks_for_the_password_the_broker_url_carries() -> None:
    documents = {(d["kind"], d["metadata"]["name"]): d for d in _documents()}
    secret = documents[("Secret", "overnight")]["stringData"]
    assert f":{secret['REDIS_PASSWORD']}@redis:" in secret["OVERNIGHT_BROKER_URL"]
    assert "OVERNIGHT_BROKER_URL" not in documents[("ConfigMap", "overnight")]["data"]
    redis = documents[("Deployment", "redis")]["spec"]["template"]["spec"]["containers"][0]
    assert redis["args"][-2:] == ["--requirepass", "$(REDIS_PASSWORD)"]
    assert {
        "name": "REDIS_PASSWORD",
        "valueFrom": {"secretKeyRef": {"name": "overnight", "key": "REDIS_PASSWORD"}},
    } in redis["env"]
    worker = documents[("Deployment", "overnight-worker")]["spec"]["template"]["spec"]["containers"][0]
    assert worker["securityContext"]["capabilities"]["add"] == ["NET_ADMIN", "NET_RAW"]  # the in-pod firewall


def test_compose_puts_redis_and_flower_behind_passwords_and_data_on_an_internal_network() -> None:
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())
    services, networks = compose["services"], compose["networks"]
    redis = services["redis"]
    assert redis["command"][-2:] == ["--requirepass", "${REDIS_PASSWORD:?set REDIS_PASSWORD in infra/.env}"]
    assert services["api"]["environment"]["OVERNIGHT_BROKER_URL"].startswith("redis://:${REDIS_PASSWORD")
    for name in ("postgres", "redis"):
        assert services[name]["networks"] == ["data"]
    assert networks["data"]["internal"] is True and networks["models"]["internal"] is True
    assert "default" not in services["router"]["networks"]
    flower = services["flower"]["command"][-1].replace("$$", "$")
    assert '--basic-auth="$FLOWER_BASIC_AUTH"' in flower and '--broker "$OVERNIGHT_BROKER_URL"' in flower
    refused = subprocess.run(["sh", "-c", flower], capture_output=True, text=True,
                             env={**os.environ, "FLOWER_BASIC_AUTH": ""})  # fmt: skip
    assert refused.returncode == 1 and "set FLOWER_BASIC_AUTH" in refused.stderr
    example = (INFRA / ".env.example").read_text()
    assert "REDIS_PASSWORD=" in example and "FLOWER_BASIC_AUTH=" in example


def test_compose_keeps_the_setup_firewall_on_the_host() -> None:
    services = yaml.safe_load((INFRA / "compose.yaml").read_text())["services"]
    firewall = services["firewall"]
    assert firewall["network_mode"] == "host" and firewall["cap_add"] == ["NET_ADMIN", "NET_RAW"]
    assert firewall["command"][:2] == ["overnight", "firewall"] and "--watch" in firewall["command"]
    assert firewall["healthcheck"]["test"] == ["CMD", "overnight", "firewall", "--check"]
    worker = services["worker"]
    assert worker["environment"]["OVERNIGHT_SANDBOX_SETUP_FIREWALL"] == "external"
    assert worker["depends_on"]["firewall"]["condition"] == "service_healthy"
    assert "iptables" in (INFRA / "Dockerfile").read_text()

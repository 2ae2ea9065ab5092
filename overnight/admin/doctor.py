"""`overnight doctor`: is this server set up the way tasks need? Each check prints a pass/fail line with a fix.

Server-side (it reads the server's settings): database, broker, sandbox, image, and the model endpoint —
reachable, serving the configured model, accepting `reasoning_effort`, calling a tool for a probe request,
reporting cached tokens, taking an image when tasks may carry them (``doctor_vision``) — vLLM's version when
/version answers, and, when vLLM's /metrics answers, speculative
decoding and prefix caching (checks that need the model itself to act are marked as depending on its weights); when
GitHub is configured, settings that cannot work, then who GitHub says the credentials are. The egress proxy, the
stored environments' network policies and the secrets key are checked in ``doctor_network.py``.
"""

from __future__ import annotations

import secrets
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from overnight.admin.doctor_vision import VISION_CHECK, VISION_FIX, takes_images
from overnight.settings import Settings

PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "ping",
        "description": "Answer the health check.",
        "parameters": {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]},
    },
}
PROBE_MESSAGES = [
    {"role": "system", "content": "You are a health check. " * 40},
    {"role": "user", "content": "Call the ping tool with ok=true."},
]


TESTED_VLLM = "0.32.0"
"""The vLLM (with mistral_common 1.12.0) the real-vLLM suite proved (infra/vllm/constraints.txt)."""
WEIGHTS_NOTE = (
    "This check depends on the model's weights: with the flags set, a model that does not reason or call tools "
    "(random or wrong weights, a model other than Medium 3.5) fails it."
)


@dataclass(kw_only=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    depends_on_weights: bool = False
    """The server's flags can be right and the check still fail, because the model itself must act."""


def _check(name: str, fix: str, run: Callable[[], str], *, weights: bool = False) -> Check:
    try:
        return Check(name=name, ok=True, detail=run(), depends_on_weights=weights)
    except Exception as exc:  # every failure is a finding, reported with its fix
        if weights:
            fix = f"{fix}. {WEIGHTS_NOTE}"
        return Check(
            name=name, ok=False, detail=f"{type(exc).__name__}: {exc}"[:300], fix=fix, depends_on_weights=weights
        )


def run_checks(settings: Settings) -> list[Check]:
    from overnight.admin.doctor_network import network_checks  # it imports this module
    from overnight.github.config import configured

    checks = [
        _check(
            "database reachable and migrated",
            "check OVERNIGHT_DATABASE_URL; `overnight up` migrates",
            lambda: _database(settings),
        ),
        _check("broker reachable", "start Redis or set OVERNIGHT_BROKER_URL", lambda: _broker(settings)),
        _check("sandbox image present", "run `overnight image build`", lambda: _image(settings)),
        _check(
            "sandbox backend runs a command",
            "start the Docker engine, or install bubblewrap",
            lambda: _sandbox(settings),
        ),
    ]
    checks += network_checks(settings, database_ok=checks[0].ok)
    checks += _model_checks(settings)
    if configured(settings) or settings.git_credentials:
        checks.append(_check("GitHub and git credential settings work",
                             "fix the setting named; see docs/github.md", lambda: _github(settings)))  # fmt: skip
    return checks


def _github(settings: Settings) -> str:
    """The settings that cannot work, else who GitHub says the credentials are (the API root answered)."""
    from overnight.github.client import client_from_settings
    from overnight.github.config import problems

    found = problems(settings)
    if found:
        raise RuntimeError("; ".join(found))
    client = client_from_settings(settings.github, attempts=1, timeout=10.0)
    if client is None:
        return f"git credentials for {', '.join(sorted(settings.git_credentials))}"
    return f"{client.identity()} at {settings.github.api_url}"


def _database(settings: Settings) -> str:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from store.engine import alembic_config, make_engine

    engine = make_engine(settings.resolved_database_url)
    with engine.connect() as connection:
        current = MigrationContext.configure(connection).get_current_revision()
    head = ScriptDirectory.from_config(alembic_config(engine)).get_current_head()
    if current != head:
        raise RuntimeError(f"schema at revision {current}, the code needs {head}")
    return f"revision {current}"


def _broker(settings: Settings) -> str:
    from overnight.broker import redact, resolve_broker_url
    from overnight.queue import TaskQueue

    url, _ = resolve_broker_url(settings)
    TaskQueue(url, queue=settings.queue).ping()
    return redact(url)


def _image(settings: Settings) -> str:
    from sandbox.image import image_present, rootfs_complete
    from worker.sandboxes import sandbox_config

    config = sandbox_config(settings)
    if config.__class__.__name__ == "DockerConfig":
        import docker

        if not image_present(docker.from_env(), settings.sandbox.image):
            raise RuntimeError(f"image {settings.sandbox.image} is missing")
        return f"Docker image {settings.sandbox.image}"
    rootfs = settings.sandbox_rootfs_for(settings.sandbox.image)
    if not rootfs_complete(rootfs):
        raise RuntimeError(f"no root filesystem at {rootfs}")
    return f"root filesystem {rootfs}"


def _sandbox(settings: Settings) -> str:
    from sandbox.base import SandboxSpec
    from sandbox.disk import remove_folder
    from worker.sandboxes import sandbox_backend

    backend = sandbox_backend(settings)
    with tempfile.TemporaryDirectory(prefix="overnight-doctor-") as folder:
        workspace = Path(folder) / "workspace"
        backend.create_workspace(workspace)  # a disk of its own, as a task's
        started = time.monotonic()
        try:
            box = backend.start(SandboxSpec(task_id="doctor", workspace=workspace))
            try:
                result = box.run("echo sandbox-ok", timeout=30)
            finally:
                box.close()
        finally:
            remove_folder(workspace)
    if result.stdout.strip() != "sandbox-ok":
        raise RuntimeError(f"the command printed {result.stdout!r} (exit {result.exit_code})")
    return f"{backend.name}, ready and ran a command in {time.monotonic() - started:.2f} s"


def _model_checks(settings: Settings) -> list[Check]:
    # One affinity key for every probe: behind the router, the repeated probe must reach the same replica's cache.
    headers = {"x-session-affinity": f"overnight-doctor-{secrets.token_hex(4)}"}
    if settings.llm.api_key is not None:
        headers["Authorization"] = f"Bearer {settings.llm.api_key.get_secret_value()}"
    http = httpx.Client(base_url=settings.llm.base_url, headers=headers, timeout=httpx.Timeout(120, connect=5))
    base = settings.llm.base_url
    checks = [_check("model endpoint reachable", f"start the model server at {base} or set OVERNIGHT_LLM_BASE_URL",
                     lambda: _models(http))]  # fmt: skip
    if not checks[0].ok:
        return checks
    body = {"model": settings.llm.model, "messages": PROBE_MESSAGES, "max_tokens": 64, "temperature": 0}
    effort = {**body, "reasoning_effort": settings.llm.reasoning_effort}
    probe = {**effort, "tools": [PROBE_TOOL], "tool_choice": "auto"}
    responses: list[dict[str, Any]] = []
    checks += [
        _check(
            "serves the configured model",
            f"serve it as {settings.llm.model} (--served-model-name) or set OVERNIGHT_LLM_MODEL",
            lambda: _serves(http, settings.llm.model),
        ),
        _check(
            "accepts reasoning_effort",
            "use a Mistral reasoning parser and a vLLM that knows the setting "
            "(--reasoning-parser mistral; vLLM >= 0.18)",
            lambda: _reasons(http, effort, responses),
            weights=settings.llm.reasoning_effort == "high",
        ),
        _check(
            "returns a tool call for a probe request",
            "serve with --enable-auto-tool-choice --tool-call-parser mistral",
            lambda: _tool_call(http, probe, responses),
            weights=True,
        ),
        _check(
            "reports cached tokens",
            "serve with --enable-prompt-tokens-details (and prefix caching on)",
            lambda: _cached(http, probe, responses),
        ),
    ]
    if settings.images.enabled:  # a task's screenshot must fail here, not mid-run
        image = lambda: takes_images(http, settings.llm.model, settings.llm.reasoning_effort)  # noqa: E731
        checks.append(_check(VISION_CHECK, VISION_FIX, image))
    version = _server_version(http, base)
    if version is not None:
        checks.append(version)
    return checks + _metrics_checks(base, headers)


def _metrics_checks(base: str, headers: dict[str, str]) -> list[Check]:
    """Speculative decoding and prefix caching, from vLLM's /metrics (skipped when it does not answer)."""
    metrics_url = base.removesuffix("/v1") + "/metrics"
    try:
        metrics = httpx.get(metrics_url, headers=headers, timeout=5)
        text = metrics.text if metrics.status_code == 200 else None
    except httpx.HTTPError:
        text = None
    if text is None:
        return [Check(name="model server metrics", ok=True, detail=f"{metrics_url} not reachable; skipped")]
    counters = parse_metrics(text)
    return [
        _check(
            "speculative decoding active (EAGLE)",
            'serve with --speculative-config \'{"method":"eagle",...}\' (see infra/vllm/serve.sh)',
            lambda: _positive(counters, "vllm:spec_decode_num_drafts_total"),
        ),
        _check(
            "prefix caching active",
            "do not pass --no-enable-prefix-caching",
            lambda: _positive(counters, "vllm:prefix_cache_queries_total"),
        ),
    ]


def _server_version(http: httpx.Client, base: str) -> Check | None:
    """vLLM's version from its /version, when the server answers there (other servers are not judged)."""
    try:
        response = http.get(base.removesuffix("/v1") + "/version", timeout=5)
        version = str(response.json()["version"]) if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        version = None
    if version is None:
        return None
    tested = version.split("+")[0] == TESTED_VLLM
    note = "the tested version" if tested else f"not the tested {TESTED_VLLM}: check it with tests/vllm"
    return Check(
        name="model server version",
        ok=True,
        detail=f"vLLM {version} ({note}; pair it with mistral_common 1.12.0, see infra/vllm/constraints.txt)",
    )


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format, summed over labels: {metric name: value}."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_part, _, value = line.rpartition(" ")
        name = name_part.split("{", 1)[0]
        try:
            values[name] = values.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return values


def _models(http: httpx.Client) -> str:
    response = http.get("/models")
    response.raise_for_status()
    return ", ".join(model["id"] for model in response.json().get("data", [])) or "(no models listed)"


def _serves(http: httpx.Client, model: str) -> str:
    served = [entry["id"] for entry in http.get("/models").json().get("data", [])]
    if model not in served:
        raise RuntimeError(f"{model!r} is not among the served models {served}")
    return model


def _post(http: httpx.Client, body: dict[str, Any], responses: list[dict[str, Any]]) -> str:
    response = http.post("/chat/completions", json=body)
    if response.status_code >= 400:
        raise RuntimeError(f"HTTP {response.status_code}: {response.text[:200]}")
    responses.append(response.json())
    return f"HTTP {response.status_code}"


def _reasons(http: httpx.Client, body: dict[str, Any], responses: list[dict[str, Any]]) -> str:
    """Accepted, and — for "high" — acted on: the answer carries the model's reasoning in its own field."""
    status = _post(http, body, responses)
    if body.get("reasoning_effort") != "high":
        return status
    message = responses[-1]["choices"][0]["message"]
    reasoning = message.get("reasoning") or message.get("reasoning_content")
    if not reasoning:
        raise RuntimeError("no reasoning in the answer to reasoning_effort=high: the server ignores the setting or "
                           "has no reasoning parser (the thinking may be left in the content)")  # fmt: skip
    return f"{status}, {len(reasoning)} characters of reasoning"


def _tool_call(http: httpx.Client, body: dict[str, Any], responses: list[dict[str, Any]]) -> str:
    _post(http, body, responses)
    calls = responses[-1]["choices"][0]["message"].get("tool_calls") or []
    if not calls:
        raise RuntimeError("the answer has no tool_calls (was the tool call left in the content?)")
    return f"{calls[0]['function']['name']}({calls[0]['function']['arguments']}), id {calls[0]['id']}"


def _cached(http: httpx.Client, body: dict[str, Any], responses: list[dict[str, Any]]) -> str:
    _post(http, body, responses)  # the same prompt again: its prefix must now come from the cache
    details = responses[-1].get("usage", {}).get("prompt_tokens_details") or {}
    if not details.get("cached_tokens"):
        raise RuntimeError(f"usage.prompt_tokens_details is {details or 'missing'}")
    return f"{details['cached_tokens']} of {responses[-1]['usage']['prompt_tokens']} prompt tokens cached"


def _positive(counters: dict[str, float], name: str) -> str:
    if counters.get(name, 0) <= 0:
        raise RuntimeError(f"{name} is {'absent' if name not in counters else 0}")
    return f"{name} = {counters[name]:g}"


def run_doctor(*, as_json: bool, say: Callable[[str], None]) -> int:
    """``overnight doctor``: every check, as JSON on stdout or one line each (with its fix) through ``say``."""
    import json
    import sys
    from dataclasses import asdict

    checks = run_checks(Settings())
    if as_json:
        sys.stdout.write(json.dumps([asdict(check) for check in checks], indent=2) + "\n")
    for check in checks if not as_json else []:
        mark = "[green]PASS[/green]" if check.ok else "[red]FAIL[/red]"
        say(f"{mark} {check.name}: {check.detail}")
        if not check.ok:
            say(f"     fix: {check.fix}")
    return 0 if all(check.ok for check in checks) else 1

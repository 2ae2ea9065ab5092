"""The agent's client against the real vLLM as deployed (serve.sh, EAGLE on): first requests, real streams,
doctor, and bench llm's figures from the real /metrics."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import docker
import pytest
from httpx_sse import connect_sse

from agent.base import ModelResponseError
from agent.client import ChatClient, LLMConfig, _TurnAccumulator
from agent.prompts import SYSTEM_PROMPT, first_user_message
from agent.tools import Toolbox
from overnight.admin.doctor_vision import VISION_CHECK
from tests.mistral_validation import assert_valid_mistral_request
from tests.overnight.test_doctor_and_bench import doctor
from tests.vllm.conftest import SERVED_MODEL, VLLMServer

pytestmark = pytest.mark.timeout(1800)  # the first test builds the venv and the models, and starts vLLM
TASK = first_user_message("Make add() add.")
FIRST = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": TASK}]


def client(server: VLLMServer, **config: object) -> ChatClient:
    settings = {"max_tokens": 8, **config}
    return ChatClient(LLMConfig(base_url=server.base_url, model=SERVED_MODEL, api_key=server.api_key, retries=0,
                                **settings))  # type: ignore[arg-type]  # fmt: skip


@pytest.mark.parametrize("effort", ["high", "none"])
def test_the_first_request_is_accepted_with_either_reasoning_effort(vllm_server: VLLMServer, effort: str) -> None:
    """Random weights never stop on their own: the loop's first request and its retry with twice the budget are
    both accepted and streamed back, and the cut-off is reported as such, not as a rejected request."""
    model = client(vllm_server, reasoning_effort=effort)
    assert_valid_mistral_request(model.build_request(FIRST, Toolbox().schemas))
    with pytest.raises(ModelResponseError, match=r"cut off at max_tokens \(16\) twice"):
        model.complete(FIRST, Toolbox().schemas)


def test_the_client_parses_a_real_stream_with_usage_on_every_chunk(vllm_server: VLLMServer) -> None:
    model = client(vllm_server, max_tokens=12)
    body = model.build_request(FIRST, Toolbox().schemas)
    chunks = []
    with connect_sse(model._http, "POST", "/chat/completions", json=body) as source:
        assert source.response.status_code == 200
        chunks = [json.loads(sse.data) for sse in source.iter_sse() if sse.data.strip() != "[DONE]"]
    # --enable-force-include-usage: usage on every chunk, not only on the final one (choices: []).
    assert all(chunk.get("usage") for chunk in chunks) and chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 12
    accumulator = _TurnAccumulator()
    for chunk in chunks:
        accumulator.add(chunk)
    turn = accumulator.turn()
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert turn.content == "".join(d.get("content") or "" for d in deltas) and turn.content
    assert turn.finish_reason == "length" and turn.usage.completion_tokens == 12
    assert turn.usage.prompt_tokens == chunks[-1]["usage"]["prompt_tokens"] > 1000
    # The same prompt again: its prefix comes from the cache (whole 128-token blocks on CPU).
    again = model._stream(body)
    assert again.usage.cached_tokens >= 128 and again.usage.cached_tokens % 128 == 0


def test_doctor_passes_what_does_not_depend_on_the_weights(
    vllm_server: VLLMServer, tmp_path: Path, docker_client: docker.DockerClient
) -> None:
    code, checks = doctor(tmp_path, vllm_server.base_url, OVERNIGHT_LLM_API_KEY=vllm_server.api_key,
                          OVERNIGHT_LLM_MODEL=SERVED_MODEL)  # fmt: skip
    failed = {name for name, check in checks.items() if not check["ok"]}
    # A random model neither reasons nor calls the probe tool; every flag-dependent check passes but the image
    # one: the tiny model has no vision encoder, so vLLM refuses an image.
    weights = {"accepts reasoning_effort", "returns a tool call for a probe request"}
    assert code == 1 and failed == weights | {VISION_CHECK}, checks
    assert "HTTP 400 to a request with one image" in checks[VISION_CHECK]["detail"], checks[VISION_CHECK]
    assert not checks[VISION_CHECK]["depends_on_weights"]
    for name in weights:
        assert checks[name]["depends_on_weights"] and "depends on the model's weights" in checks[name]["fix"]
    for name in ("serves the configured model", "reports cached tokens", "speculative decoding active (EAGLE)",
                 "prefix caching active"):  # fmt: skip
        assert checks[name]["ok"] and not checks[name]["depends_on_weights"]
    assert checks["model server version"]["detail"].startswith("vLLM 0.32.0 (the tested version")


def test_bench_llm_reports_acceptance_and_prefix_cache_from_the_real_metrics(
    vllm_server: VLLMServer, tmp_path: Path
) -> None:
    output = tmp_path / "bench.json"
    result = subprocess.run(
        ["overnight", "bench", "llm", "--base-url", vllm_server.base_url, "--api-key", vllm_server.api_key,
         "--concurrency", "1", "--steps", "3", "--max-tokens", "16", "--output", str(output)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(output.read_text())[vllm_server.base_url]
    assert row["requests"] == 3 and row["ttft_ms_median"] > 0 and row["tokens_per_s_total"] > 0
    # A random draft head: drafts are made and verified, almost none accepted.
    assert row["mean_acceptance_length"] is not None and 1.0 <= row["mean_acceptance_length"] < 1.5
    assert row["draft_acceptance_rate"] is not None and row["draft_acceptance_rate"] < 0.5
    assert 0 < row["prefix_cache_hit_rate"] < 1

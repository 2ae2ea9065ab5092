"""vLLM's suffix decoding (SPEC_METHOD=suffix, Arctic Inference) beside EAGLE: serve.sh starts it, the agent's
requests are accepted and parsed, and ``bench llm --compare`` measures both on the same replayed trajectory."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agent.base import ModelResponseError
from agent.client import ChatClient, LLMConfig
from agent.prompts import SYSTEM_PROMPT, first_user_message
from agent.tools import Toolbox
from overnight.admin.doctor import parse_metrics
from tests.vllm.conftest import SERVED_MODEL, VLLMServer, serve

pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="module")
def suffix(
    vllm_python: Path, tiny_models: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VLLMServer]:
    yield from serve(vllm_python, tiny_models, "suffix", tmp_path_factory.mktemp("vllm-suffix"))


def test_the_suffix_method_serves_the_agents_requests(suffix: VLLMServer) -> None:
    log = suffix.log.read_text(errors="replace")
    assert "method='suffix'" in log  # the speculative config vLLM parsed from serve.sh
    model = ChatClient(LLMConfig(base_url=suffix.base_url, model=SERVED_MODEL, api_key=suffix.api_key,
                                 retries=0, max_tokens=16))  # fmt: skip
    messages = [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": first_user_message("Make add() add.")}]  # fmt: skip
    with pytest.raises(ModelResponseError, match=r"cut off at max_tokens \(32\) twice"):
        model.complete(messages, Toolbox().schemas)
    metrics = parse_metrics(httpx.get(f"{suffix.root}/metrics", timeout=10).text)
    assert "vllm:spec_decode_num_drafts_total" in metrics and metrics["vllm:prefix_cache_hits_total"] > 0


def test_bench_llm_compares_eagle_and_suffix_on_one_trajectory(
    vllm_server: VLLMServer, suffix: VLLMServer, tmp_path: Path
) -> None:
    output = tmp_path / "bench.json"
    result = subprocess.run(
        ["overnight", "bench", "llm", "--base-url", vllm_server.base_url, "--compare", suffix.base_url,
         "--api-key", suffix.api_key, "--concurrency", "1", "--steps", "3", "--max-tokens", "16",
         "--output", str(output)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(output.read_text())
    (eagle,) = report[vllm_server.base_url]
    (suffix_row,) = report[suffix.base_url]
    for row in (eagle, suffix_row):
        assert row["requests"] == 3 and row["tokens_per_s_total"] > 0 and 0 < row["prefix_cache_hit_rate"] < 1
    assert eagle["mean_acceptance_length"] is not None
    # Suffix decoding drafts only where the output repeats the prompt or earlier output: a random model's
    # rarely does, and then no draft is made at all (reported as "—").
    assert suffix_row["mean_acceptance_length"] is None or suffix_row["mean_acceptance_length"] >= 1
    assert f"results in {output}" in result.stderr

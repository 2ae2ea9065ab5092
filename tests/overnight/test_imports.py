"""The control plane never imports the model host's stack (torch, vllm); the CLI client stays light."""

from __future__ import annotations

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["api.app", "worker.tasks", "worker.__main__", "overnight.cli"])
def test_control_plane_does_not_import_torch_or_vllm(module: str) -> None:
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'vllm', 'transformers') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_cli_client_does_not_import_the_server_side() -> None:
    """Nor the network client before a command needs it: `--help` and usage errors start fast."""
    code = (
        "import sys, overnight.cli; "
        "print(sorted(m for m in ('fastapi', 'sqlalchemy', 'celery', 'docker', 'git', 'httpx', 'pydantic_settings')"
        " if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"

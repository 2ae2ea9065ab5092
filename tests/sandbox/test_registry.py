"""Set-up sandboxes reach the package registries through this machine's TLS-intercepting proxy only when
they trust the host's CA bundle (pip, npm, curl and Python alike); agent sandboxes reach nothing."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from sandbox.base import SandboxBackend, SandboxSpec

HOST_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PIP = "python3 -m pip download --no-deps --quiet --disable-pip-version-check -d /tmp/wheels six==1.17.0"
NPM = "npm view is-number@7.0.0 version --registry https://registry.npmjs.org/"
CURL = "curl -sS --max-time 20 -o /dev/null -w '%{http_code}' https://pypi.org/simple/six/"


def test_with_the_host_bundle_every_client_reaches_the_registries(
    backend: SandboxBackend, new_workspace: Callable[..., Path]
) -> None:
    workspace = new_workspace(backend)
    box = backend.start(SandboxSpec(task_id="registry", workspace=workspace, network=True, purpose="setup",
                                    ca_bundle=HOST_BUNDLE))  # fmt: skip
    try:
        pip = box.run(PIP, timeout=120)
        assert pip.exit_code == 0, pip.stderr
        assert box.run("ls /tmp/wheels").stdout.strip() == "six-1.17.0-py2.py3-none-any.whl"
        npm = box.run(NPM, timeout=120)
        assert (npm.exit_code, npm.stdout.strip()) == (0, "7.0.0"), npm.stderr
        assert box.run(CURL, timeout=60).stdout == "200"
        assert box.run("python3 -c 'import ssl; print(ssl.get_default_verify_paths().openssl_cafile)'").exit_code == 0
    finally:
        box.close()


def test_without_it_pip_meets_the_proxy_s_certificate(
    backend: SandboxBackend, new_workspace: Callable[..., Path]
) -> None:
    workspace = new_workspace(backend)
    box = backend.start(SandboxSpec(task_id="registry-raw", workspace=workspace, network=True, purpose="setup"))
    try:
        pip = box.run(PIP.replace(" --quiet", "") + " --retries 0 --timeout 20", timeout=120)
    finally:
        box.close()
    if pip.exit_code == 0:
        pytest.skip("this host reaches PyPI without a TLS-intercepting proxy")
    assert "certificate" in (pip.stdout + pip.stderr).lower()

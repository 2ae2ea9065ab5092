"""What `overnight up` chooses for set-up sandboxes' trust store, and says so."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from overnight.admin.server import HOST_CA_BUNDLE, _choose_ca_bundle
from overnight.settings import SandboxSettings, Settings


@pytest.mark.skipif(not HOST_CA_BUNDLE.is_file(), reason="needs the host's CA bundle (Debian: ca-certificates)")
def test_the_host_bundle_is_trusted_only_when_it_differs_from_the_image_s(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    image_bundle = rootfs / HOST_CA_BUNDLE.relative_to("/")
    image_bundle.parent.mkdir(parents=True)
    said: list[str] = []
    settings = Settings(data_dir=tmp_path, sandbox=SandboxSettings(rootfs=rootfs))
    assert _choose_ca_bundle(settings, said.append) is None  # no image bundle to compare with
    shutil.copy(HOST_CA_BUNDLE, image_bundle)
    assert _choose_ca_bundle(settings, said.append) is None and said == []  # the same trust store
    image_bundle.write_text("-----BEGIN CERTIFICATE-----\nnot the host's\n-----END CERTIFICATE-----\n")
    assert _choose_ca_bundle(settings, said.append) == HOST_CA_BUNDLE  # a TLS proxy's CA only the host has
    assert said == [f"set-up sandboxes trust this host's CA bundle {HOST_CA_BUNDLE}: it differs from the image's"]
    configured = tmp_path / "proxy-ca.pem"
    chosen = _choose_ca_bundle(Settings(data_dir=tmp_path, sandbox=SandboxSettings(ca_bundle=configured)), said.append)
    assert chosen == configured and said[-1].endswith("(OVERNIGHT_SANDBOX_CA_BUNDLE)")


def test_up_writes_the_client_config_where_the_client_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's settings find the config dir on their own (they do not import the client package)."""
    from overnight.cli.settings import ClientSettings
    from overnight.cli.settings import default_config_dir as client_default

    monkeypatch.delenv("OVERNIGHT_CONFIG_DIR", raising=False)
    assert Settings().config_dir == ClientSettings().config_dir == client_default()

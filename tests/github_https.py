"""A GitHub Enterprise Server stand-in on https://127.0.0.1:<random port>: the fake GitHub's REST API under
``/api/v3`` and git's smart HTTP protocol (the real ``git http-backend``) for everything else, behind a
certificate of a certificate authority made for the test. Like GitHub, the git side refuses any request without
a valid token (401 with a Basic challenge, so a git that sends none asks for a username)."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from overnight.loopback import LoopbackServer
from tests.github_fake import FakeGitHub

API_PREFIX = "/api/v3"


def make_tls(folder: Path) -> tuple[Path, Path, Path]:
    """A certificate authority and a server certificate for 127.0.0.1 signed by it: (CA, chain, key) PEM files."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Overnight test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))  # fmt: skip
    return paths


@dataclass
class GitRequest:
    method: str
    path: str
    authorised: bool


@dataclass
class SmartHTTP:
    """git's smart HTTP protocol over the bare repositories under ``root`` (``OWNER/REPO.git``), through the
    ``git http-backend`` CGI program; every request needs a token the fake GitHub accepts."""

    root: Path
    github: FakeGitHub
    requests: list[GitRequest] = field(default_factory=list)

    def _token(self, header: str) -> str | None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            _, _, password = base64.b64decode(value.strip()).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        return password

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        request = Request(scope, receive)
        token = self._token(request.headers.get("authorization", ""))
        authorised = token is not None and self.github._token_ok(f"token {token}")
        self.requests.append(GitRequest(request.method, request.url.path, authorised))
        if not authorised:
            challenge = {"WWW-Authenticate": 'Basic realm="GitHub"'}
            await Response("Authentication failed\n", status_code=401, headers=challenge)(scope, receive, send)
            return
        body = await request.body()
        env = {
            "PATH": os.environ["PATH"], "HOME": str(self.root), "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_PROJECT_ROOT": str(self.root), "GIT_HTTP_EXPORT_ALL": "1", "REMOTE_USER": "x-access-token",
            "REMOTE_ADDR": "127.0.0.1", "REQUEST_METHOD": request.method, "PATH_INFO": request.url.path,
            "QUERY_STRING": request.url.query, "CONTENT_TYPE": request.headers.get("content-type", ""),
            "CONTENT_LENGTH": str(len(body)), "HTTP_CONTENT_ENCODING": request.headers.get("content-encoding", ""),
            "HTTP_GIT_PROTOCOL": request.headers.get("git-protocol", ""),
        }  # fmt: skip
        done = await run_in_threadpool(subprocess.run, ["git", "http-backend"], input=body, env=env,
                                       capture_output=True, check=False)  # fmt: skip
        ends = [(done.stdout.find(sep), sep) for sep in (b"\r\n\r\n", b"\n\n") if sep in done.stdout]
        if not ends:
            await Response(done.stderr, status_code=500)(scope, receive, send)
            return
        at, separator = min(ends)
        head, payload = done.stdout[:at], done.stdout[at + len(separator) :]
        status, headers = 200, {}
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers[name.strip()] = value.strip()
        await Response(payload, status_code=status, headers=headers)(scope, receive, send)


class GitHubEnterprise(LoopbackServer):
    """``https://127.0.0.1:PORT/api/v3`` (the fake GitHub) and ``https://127.0.0.1:PORT/OWNER/REPO.git``."""

    def __init__(self, fake: FakeGitHub, git_root: Path, tls_folder: Path) -> None:
        self.ca, chain, key = make_tls(tls_folder)
        self.fake = fake
        self.git = SmartHTTP(git_root, fake)
        rest = fake.app()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            path = scope.get("path", "")
            if path.startswith(API_PREFIX + "/"):
                inner = {**scope, "path": path[len(API_PREFIX) :], "raw_path": path[len(API_PREFIX) :].encode()}
                await rest(inner, receive, send)
            else:
                await self.git(scope, receive, send)

        super().__init__(app, name="GitHub Enterprise stand-in", tls=(chain, key))

    @property
    def api_url(self) -> str:
        return self.url + API_PREFIX

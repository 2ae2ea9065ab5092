"""Secrets encrypted at rest: Fernet (``cryptography``: AES-128-CBC with HMAC-SHA256, a timestamp, a random
IV) under the server's keys, several at once through ``MultiFernet`` so that keys can be rotated.

The keys come from ``OVERNIGHT_SECRETS_KEY`` (comma-separated) or ``OVERNIGHT_SECRETS_KEY_FILE`` (one a line):
the first key encrypts, every key decrypts. Each value is sealed together with the environment pattern and
the secret's name it belongs to, so a ciphertext moved to another row (another environment, another name)
no longer opens. Nothing here logs or returns a value in an error message.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class SecretsUnavailable(Exception):
    """No key, a key that does not parse, or a ciphertext no key opens; the message names no value."""


def new_key() -> str:
    """A fresh Fernet key (url-safe base64 of 32 random bytes)."""
    return Fernet.generate_key().decode()


def parse_keys(text: str) -> list[Fernet]:
    """The keys of a setting or key file: separated by commas or newlines, ``#`` comments and blanks skipped."""
    keys: list[Fernet] = []
    for number, raw in enumerate(text.replace(",", "\n").splitlines(), 1):
        item = raw.split("#", 1)[0].strip()
        if not item:
            continue
        try:
            keys.append(Fernet(item.encode()))
        except (ValueError, TypeError):
            raise SecretsUnavailable(
                f"secrets key {number} is not a Fernet key (`overnight secrets new-key`)"
            ) from None
    return keys


def read_key_file(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        raise SecretsUnavailable(f"cannot read the secrets key file {path}: {exc.strerror}") from None


def write_key_file(path: Path) -> None:
    """A new key file (mode 0600) at ``path``, unless one is there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as handle:
        handle.write(new_key() + "\n")


class SecretBox:
    """Seals and opens secret values under the server's keys."""

    def __init__(self, keys: list[Fernet]) -> None:
        if not keys:
            raise SecretsUnavailable(
                "secrets need a server key: set OVERNIGHT_SECRETS_KEY or OVERNIGHT_SECRETS_KEY_FILE on the API "
                "and every worker (`overnight secrets new-key` makes one; docs/environments.md)"
            )
        self._fernet = MultiFernet(keys)
        self.key_count = len(keys)

    @classmethod
    def from_config(cls, key: str | None, key_file: Path | None) -> SecretBox:
        """The keys of the setting, then those of the key file (the first one of all encrypts)."""
        text = (key or "") + "\n" + (read_key_file(key_file) if key_file is not None else "")
        return cls(parse_keys(text))

    def seal(self, value: str, *, pattern: str, name: str) -> str:
        plain = json.dumps({"pattern": pattern, "name": name, "value": value}, ensure_ascii=False)
        return self._fernet.encrypt(plain.encode()).decode()

    def open(self, token: str, *, pattern: str, name: str) -> str:
        try:
            plain = json.loads(self._fernet.decrypt(token.encode()))
        except (InvalidToken, ValueError):
            raise SecretsUnavailable(f"secret {name} of {pattern} does not open with this server's keys") from None
        if plain.get("pattern") != pattern or plain.get("name") != name:
            raise SecretsUnavailable(f"secret {name} of {pattern} was sealed for another environment or name")
        return str(plain["value"])

    def rotate(self, token: str) -> str:
        """The same value sealed under the first key (``InvalidToken`` past every key is SecretsUnavailable)."""
        try:
            return self._fernet.rotate(token.encode()).decode()
        except InvalidToken:
            raise SecretsUnavailable("a stored secret does not open with any of this server's keys") from None

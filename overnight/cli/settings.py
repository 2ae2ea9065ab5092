"""The client side's settings (where the API is, who is asking) and its config file, apart from the server's
``Settings`` so that the CLI's start-up does not build the server's settings class."""

from __future__ import annotations

import json
import os
from pathlib import Path

from platformdirs import user_config_path
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

APP_NAME = "overnight"


def default_config_dir() -> Path:
    return user_config_path(APP_NAME, appauthor=False)


CONFIG_FILE = "config.json"


def config_dir_from_env() -> Path:
    """OVERNIGHT_CONFIG_DIR, else the user's config dir; read before the settings that live in it."""
    return Path(os.environ.get("OVERNIGHT_CONFIG_DIR") or default_config_dir())


class ClientSettings(BaseSettings):
    """What the remote CLI needs: where the API is and who is asking. Environment variables win over the
    client config file (``config.json`` in the config dir, written by ``overnight up`` and ``overnight login``)."""

    model_config = SettingsConfigDict(env_prefix="OVERNIGHT_", extra="ignore", use_attribute_docstrings=True)

    server: str = "http://127.0.0.1:8177"
    """Base URL of the Overnight API the CLI talks to."""
    token: SecretStr | None = None
    """Bearer token sent to the API."""
    config_dir: Path = Field(default_factory=default_config_dir)
    """Where the client config file lives (the user's config dir, e.g. ~/.config/overnight)."""

    @field_validator("server")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = JsonConfigSettingsSource(settings_cls, json_file=config_dir_from_env() / CONFIG_FILE)
        return init_settings, env_settings, config_file


def write_client_config(config_dir: Path, *, server: str, token: str) -> Path:
    """Store the server and token for the CLI (mode 0600: the token is a secret)."""
    config_dir.mkdir(parents=True, exist_ok=True)
    path = config_dir / CONFIG_FILE
    descriptor = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump({"server": server, "token": token}, handle, indent=2)
    path.with_suffix(".tmp").replace(path)
    return path


def read_client_config(config_dir: Path) -> dict[str, str]:
    path = config_dir / CONFIG_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}

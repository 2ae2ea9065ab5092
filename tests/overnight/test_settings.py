"""Settings read from the environment the way deployments write it."""

from __future__ import annotations

from functools import reduce
from ipaddress import IPv4Network
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError
from pydantic_settings import EnvSettingsSource, SettingsError

from overnight.settings import GitHubSettings, Settings
from overnight.variables import VariablesSource, variables

# Every variable of the flat settings class the parts' settings replaced, what it was set to and where the
# nested settings keep it: a deployment's environment keeps working unchanged.
FLAT_NAMES: list[tuple[str, str, str, object]] = [
    ("CONFIG_DIR", "/srv/config", "config_dir", Path("/srv/config")),
    ("DATA_DIR", "/srv/data", "data_dir", Path("/srv/data")),
    ("DATABASE_URL", "postgresql+psycopg://db/overnight", "database_url", "postgresql+psycopg://db/overnight"),
    ("BROKER_URL", "redis://redis:6379/1", "broker_url", "redis://redis:6379/1"),
    ("QUEUE", "nightly", "queue", "nightly"),
    ("API_HOST", "0.0.0.0", "api.host", "0.0.0.0"),
    ("API_PORT", "9000", "api.port", 9000),
    ("SSE_PING_SECONDS", "7.5", "api.sse_ping_seconds", 7.5),
    ("API_MAX_BODY_BYTES", "4096", "api.max_body_bytes", 4096),
    ("API_MAX_UPLOAD_BYTES", "8192", "api.max_upload_bytes", 8192),
    ("TOKEN_TTL_DAYS", "30", "api.token_ttl_days", 30.0),
    ("MAX_QUEUED_TASKS_PER_USER", "7", "api.max_queued_tasks_per_user", 7),
    ("ALLOW_LOCAL_REPOS", "true", "allow_local_repos", True),
    ("LOCAL_REPO_ROOTS", '["/home"]', "local_repo_roots", [Path("/home")]),
    ("REPO_ACCESS", '{"https://x/*": ["al"]}', "repo_access", {"https://x/*": ["al"]}),
    ("LLM_BASE_URL", "http://gpu:8000/v1/", "llm.base_url", "http://gpu:8000/v1"),
    ("LLM_PROVIDER", "mistral", "llm.provider", "mistral"),
    ("LLM_MODEL", "served", "llm.model", "served"),
    ("LLM_API_KEY", "sk-1", "llm.api_key", "sk-1"),
    ("LLM_REASONING_EFFORT", "none", "llm.reasoning_effort", "none"),
    ("LLM_TEMPERATURE", "0.2", "llm.temperature", 0.2),
    ("LLM_TOP_P", "0.5", "llm.top_p", 0.5),
    ("LLM_MAX_TOKENS", "1000", "llm.max_tokens", 1000),
    ("LLM_REQUEST_TIMEOUT", "60", "llm.timeout", 60.0),
    ("LLM_RETRIES", "1", "llm.retries", 1),
    ("AGENT_MAX_STEPS", "5", "agent.budget.max_steps", 5),
    ("AGENT_MAX_WALL_SECONDS", "60", "agent.budget.max_wall_seconds", 60.0),
    ("AGENT_MAX_TOTAL_TOKENS", "5000", "agent.budget.max_total_tokens", 5000),
    ("AGENT_MAX_COST", "2.5", "agent.budget.max_cost", 2.5),
    ("PRICE_INPUT_PER_MTOK", "1.5", "agent.budget.price_input", 1.5),
    ("PRICE_CACHED_INPUT_PER_MTOK", "0.15", "agent.budget.price_cached_input", 0.15),
    ("PRICE_OUTPUT_PER_MTOK", "7.5", "agent.budget.price_output", 7.5),
    ("AGENT_COMPACT_THRESHOLD", "5000", "agent.compact_threshold", 5000),
    ("AGENT_MAX_COMPACTIONS", "2", "agent.max_compactions", 2),
    ("AGENT_TOOL_OUTPUT_LIMIT", "3000", "agent.tool_output_limit", 3000),
    ("SANDBOX_BACKEND", "bwrap", "sandbox.backend", "bwrap"),
    ("SANDBOX_IMAGE", "img:1", "sandbox.image", "img:1"),
    ("SANDBOX_REPO_IMAGES", '["img:2"]', "sandbox.repo_images", ["img:2"]),
    ("SANDBOX_ROOTFS", "/srv/rootfs", "sandbox.rootfs", Path("/srv/rootfs")),
    ("SANDBOX_MEMORY", "3g", "sandbox.limits.memory", "3g"),
    ("SANDBOX_PIDS", "64", "sandbox.limits.pids", 64),
    ("SANDBOX_CPUS", "0.5", "sandbox.limits.cpus", 0.5),
    ("SANDBOX_COMMAND_TIMEOUT", "42", "sandbox.limits.command_timeout", 42.0),
    ("SANDBOX_COMMAND_TIMEOUT", "42", "agent.command_timeout", 42.0),  # one variable, both places
    ("SANDBOX_DISK_LIMIT", "1024", "sandbox.limits.disk_limit", 1024),
    ("SANDBOX_DISK_ENFORCEMENT", "poll", "sandbox.limits.disk_enforcement", "poll"),
    ("SANDBOX_TMP_SIZE", "2g", "sandbox.limits.tmp_size", "2g"),
    ("SANDBOX_HOME_SIZE", "3g", "sandbox.limits.home_size", "3g"),
    ("SANDBOX_SETUP_NETWORK", "false", "sandbox.setup_network", False),
    ("SANDBOX_CA_BUNDLE", "/etc/ca.pem", "sandbox.ca_bundle", Path("/etc/ca.pem")),
    ("SANDBOX_PROXY", "http://proxy:3128", "sandbox.proxy", "http://proxy:3128"),
    ("SANDBOX_NO_PROXY", "internal", "sandbox.no_proxy", "internal"),
    (
        "SANDBOX_SETUP_ALLOWED_NETWORKS",
        '["10.1.0.0/16"]',
        "sandbox.setup_allowed_networks",
        [IPv4Network("10.1.0.0/16")],
    ),
    ("SANDBOX_SETUP_FIREWALL", "external", "sandbox.setup_firewall", "external"),
    ("SANDBOX_AGENT_NETWORK", "true", "sandbox.agent_network", True),
    (
        "SANDBOX_EGRESS_ALLOWED_NETWORKS",
        '["10.2.0.0/16"]',
        "sandbox.egress_allowed_networks",
        [IPv4Network("10.2.0.0/16")],
    ),
    ("SANDBOX_SETUP_EGRESS", "registries", "sandbox.setup_egress", "registries"),
    (
        "SANDBOX_SETUP_REGISTRIES",
        '["pypi.org", "*.Example.com"]',
        "sandbox.setup_registries",
        ["pypi.org", "*.example.com"],
    ),
    ("SANDBOX_SETUP_TIMEOUT", "100", "sandbox.setup_timeout", 100),
    ("SANDBOX_ENV_MAX_AGE_HOURS", "1.5", "sandbox.env_max_age_hours", 1.5),
    ("SANDBOX_ENV_MAX_BYTES", "4096", "sandbox.env_max_bytes", 4096),
    ("TASK_TIME_LIMIT", "600", "worker.task_time_limit", 600),
    ("TASK_MAX_ATTEMPTS", "2", "worker.task_max_attempts", 2),
    ("MAX_ACTIVE_TASKS_PER_USER", "2", "worker.max_active_tasks_per_user", 2),
    ("WORKER_HEARTBEAT_SECONDS", "2", "worker.heartbeat_seconds", 2.0),
    ("WORKER_STALE_SECONDS", "20", "worker.stale_seconds", 20.0),
    ("DATABASE_RETRY_SECONDS", "10", "worker.database_retry_seconds", 10.0),
    ("REAP_SECONDS", "15", "worker.reap_seconds", 15.0),
    ("RECONCILE_SECONDS", "12", "worker.reconcile_seconds", 12.0),
    ("MIRROR_MAX_BYTES", "4096", "worker.mirror_max_bytes", 4096),
    ("GIT_CREDENTIALS", '{"git.example.com": "t0k"}', "git_credentials", {"git.example.com": "t0k"}),
    ("GIT_AUTHOR_NAME", "Night", "worker.git_author_name", "Night"),
    ("GIT_AUTHOR_EMAIL", "n@example.com", "worker.git_author_email", "n@example.com"),
    ("GIT_MEMORY_LIMIT", str(2**27), "worker.git_memory_limit", 2**27),
    ("MAX_PATCH_BYTES", "2048", "worker.max_patch_bytes", 2048),
    ("GITHUB_WEBHOOK_SECRET", "s3cret", "github.webhook_secret", "s3cret"),
    ("GITHUB_WEBHOOK_MAX_BODY_BYTES", "2048", "github.webhook_max_body_bytes", 2048),
    ("GITHUB_APP_ID", "4242", "github.app_id", "4242"),
    ("GITHUB_PRIVATE_KEY", "/srv/key.pem", "github.private_key", "/srv/key.pem"),
    ("GITHUB_TOKEN", "ghp_x", "github.token", "ghp_x"),
    ("GITHUB_API_URL", "https://ghe.example.com/api/v3/", "github.api_url", "https://ghe.example.com/api/v3"),
    ("GITHUB_GIT_URL", "https://git.example.com", "github.git_url", "https://git.example.com"),
    ("GITHUB_TRIGGER_LABEL", "nightly", "github.trigger_label", "nightly"),
    ("GITHUB_COMMAND", "/night", "github.command", "/night"),
    ("GITHUB_TRIGGERS", '["label"]', "github.triggers", ["label"]),
    ("GITHUB_PR_COMMENTS_NEED_COMMAND", "false", "github.pr_comments_need_command", False),
    ("GITHUB_ALLOWED_ASSOCIATIONS", '["owner"]', "github.allowed_associations", ["OWNER"]),
    ("GITHUB_REPOSITORIES", '["acme/app"]', "github.repositories", ["acme/app"]),
    ("GITHUB_REPLY_UNAUTHORISED", "false", "github.reply_unauthorised", False),
    ("GITHUB_DRAFT", "false", "github.draft", False),
    ("PUBLIC_URL", "https://overnight.example.com", "public_url", "https://overnight.example.com"),
    ("SECRETS_KEY", "k1,k2", "secrets.key", "k1,k2"),
    ("SECRETS_KEY_FILE", "/srv/secrets.key", "secrets.key_file", Path("/srv/secrets.key")),
    ("IMAGES_ENABLED", "false", "images.enabled", False),
    ("IMAGES_MAX_BYTES", "2048", "images.max_bytes", 2048),
    ("IMAGES_MAX_PER_TASK", "2", "images.max_per_task", 2),
    ("IMAGES_MAX_PIXELS", "65536", "images.max_pixels", 65536),
    ("IMAGES_FETCH_TIMEOUT", "3.5", "images.fetch_timeout", 3.5),
    ("IMAGES_FETCH_ALLOWED_NETWORKS", '["127.0.0.0/8"]', "images.fetch_allowed_networks", [IPv4Network("127.0.0.0/8")]),
]


def at(settings: Settings, path: str) -> object:
    """The value at ``path``, secrets revealed (a dict's too)."""
    value = reduce(getattr, path.split("."), settings)
    if isinstance(value, dict):
        return {key: reveal(item) for key, item in value.items()}
    return reveal(value)


def reveal(value: object) -> object:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def test_every_variable_of_the_flat_settings_sets_the_same_value_in_the_nested_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env file
    for name, raw, _, _ in FLAT_NAMES:
        monkeypatch.setenv(f"OVERNIGHT_{name}", raw)
    settings = Settings()
    for name, _, path, expected in FLAT_NAMES:
        assert at(settings, path) == expected, f"OVERNIGHT_{name} -> {path}"
    assert {f"OVERNIGHT_{name}" for name, *_ in FLAT_NAMES} == {variable.name for variable in variables(Settings)}


def test_a_dotenv_file_sets_nested_values_and_the_environment_wins_over_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text(
        "OVERNIGHT_SANDBOX_MEMORY=3g\nOVERNIGHT_LLM_MODEL=from-file\nOVERNIGHT_PRICE_INPUT_PER_MTOK=1.5\n"
        "POSTGRES_PASSWORD=not-ours\nOVERNIGHT_NOT_A_SETTING=1\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OVERNIGHT_LLM_MODEL", "from-environment")
    settings = Settings()
    assert settings.sandbox.limits.memory == "3g" and settings.agent.budget.price_input == 1.5
    assert settings.llm.model == "from-environment"
    assert settings.sandbox.limits.pids == 512  # the rest of the part keeps its defaults


def test_the_documented_defaults_are_the_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for variable in variables(Settings):
        monkeypatch.delenv(variable.name, raising=False)
    settings = Settings()
    for variable in variables(Settings):
        if variable.field.default_factory is None:
            assert reduce(getattr, variable.path, settings) == variable.field.default, variable.name


def test_a_blank_env_line_means_unset_not_an_empty_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # infra/.env.example leaves these blank; "" must not become Path(".") mounted over the CA bundle.
    for name in ("SANDBOX_CA_BUNDLE", "SANDBOX_ROOTFS", "GITHUB_TOKEN", "GITHUB_WEBHOOK_SECRET", "DATABASE_URL"):
        monkeypatch.setenv(f"OVERNIGHT_{name}", "")
    settings = Settings()
    assert settings.sandbox.ca_bundle is None and settings.sandbox.rootfs is None
    assert settings.github.token is None and settings.github.webhook_secret is None
    assert settings.resolved_database_url.endswith("overnight.db")
    monkeypatch.setenv("OVERNIGHT_SANDBOX_CA_BUNDLE", "/etc/ssl/certs/ca-certificates.crt")
    assert Settings().sandbox.ca_bundle == Path("/etc/ssl/certs/ca-certificates.crt")


def test_a_value_that_does_not_parse_is_named_by_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVERNIGHT_SANDBOX_REPO_IMAGES", "img:2")  # not a JSON list
    with pytest.raises(SettingsError, match="OVERNIGHT_SANDBOX_REPO_IMAGES"):
        Settings()


def test_a_variable_set_to_its_default_still_counts_as_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """`overnight up` turns local repositories on only when the operator said nothing about them."""
    monkeypatch.delenv("OVERNIGHT_ALLOW_LOCAL_REPOS", raising=False)
    assert "allow_local_repos" not in Settings().model_fields_set
    monkeypatch.setenv("OVERNIGHT_ALLOW_LOCAL_REPOS", "false")
    assert "allow_local_repos" in Settings().model_fields_set


def test_a_flat_name_in_code_is_refused_rather_than_ignored() -> None:
    with pytest.raises(ValidationError, match="sandbox_rootfs"):
        Settings(sandbox_rootfs="/srv/rootfs")  # type: ignore[call-arg]


def test_github_clone_base_follows_the_api_root() -> None:
    assert GitHubSettings().git_base == "https://github.com"
    assert GitHubSettings(api_url="https://ghe.example.com/api/v3/").git_base == "https://ghe.example.com"
    assert GitHubSettings(git_url="https://git.example.com/").git_base == "https://git.example.com"


def test_unknown_author_associations_are_refused() -> None:
    assert GitHubSettings(allowed_associations=["owner", "member"]).allowed_associations == ["OWNER", "MEMBER"]
    with pytest.raises(ValidationError, match="unknown author_association"):
        GitHubSettings(allowed_associations=["OWNER", "ADMIN"])


def test_the_variables_source_answers_one_field_as_it_reads_them_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env file
    monkeypatch.setenv("OVERNIGHT_QUEUE", "night")
    monkeypatch.setenv("OVERNIGHT_SANDBOX_MEMORY", "3g")
    source = VariablesSource(Settings, EnvSettingsSource(Settings))
    assert source.get_field_value(Settings.model_fields["queue"], "queue") == ("night", "queue", False)
    value, _, is_complex = source.get_field_value(Settings.model_fields["sandbox"], "sandbox")
    assert value == {"limits": {"memory": "3g"}} and is_complex

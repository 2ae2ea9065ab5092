"""The one settings class of the server side (API, worker); the client's are in ``overnight.cli.settings``.

Settings are nested by part (``settings.api``, ``settings.llm``, ``settings.agent``, ``settings.sandbox``,
``settings.worker``, ``settings.github``, ``settings.secrets``), and a part that has a config type of its own is
given that type as it is (``LLMConfig``, ``AgentConfig`` and its ``Budget``, ``SandboxLimits``). Each value is
still one flat ``OVERNIGHT_*`` variable (or ``.env`` line): ``OVERNIGHT_<PART>_<FIELD>`` (``OVERNIGHT_SANDBOX_MEMORY``
sets ``sandbox.limits.memory``), the few older names in ``Settings.renamed``, a top-level field ``OVERNIGHT_<FIELD>``
(``overnight.variables`` reads them; the README's table is made from ``variables(Settings)``). Settings are
passed down explicitly; no other module reads ``os.environ`` (but ``overnight.cli.settings``, for the client's).
"""

from __future__ import annotations

from ipaddress import IPv4Network
from pathlib import Path
from typing import ClassVar, Literal

from platformdirs import user_config_path, user_data_path
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

from agent.budget import AgentConfig
from agent.client import LLMConfig
from overnight.environments import Domain
from overnight.images import ImageSettings
from overnight.secrets import SecretBox
from overnight.variables import VariablesSource
from sandbox.base import SandboxLimits

APP_NAME = "overnight"
GitHubTrigger = Literal["label", "issue-comment", "pr-comment", "review-comment"]
GITHUB_TRIGGERS: tuple[GitHubTrigger, ...] = ("label", "issue-comment", "pr-comment", "review-comment")
PART = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def default_data_dir() -> Path:
    return user_data_path(APP_NAME, appauthor=False)


def default_config_dir() -> Path:
    """The client's config dir (``overnight.cli.settings`` finds it the same way; the server side does not import
    the client package): where `overnight up` writes the CLI's server and token."""
    return user_config_path(APP_NAME, appauthor=False)


class APISettings(BaseModel):
    """The HTTP API and its tokens."""

    model_config = PART

    host: str = "127.0.0.1"
    """Address the API listens on."""
    port: int = Field(default=8177, ge=1, le=65535)
    """Port the API listens on."""
    sse_ping_seconds: float = Field(default=15, gt=0)
    """How often (seconds) a task's event stream sends a keep-alive comment, so that proxies and load
    balancers do not drop a follower while the task is quiet."""
    max_body_bytes: int = Field(default=2**20, ge=1024)
    """Largest request body of an API route (counted as it streams, chunked bodies too); more gets 413."""
    max_upload_bytes: int = Field(default=16 * 2**20, ge=1024)
    """Largest body of `POST /v1/tasks`, which may carry uploaded local changes (up to 10 MiB, base64)."""
    token_ttl_days: float = Field(default=90, ge=0)
    """Days a token from `overnight token create` stays valid unless --expires-in-days says otherwise
    (0: never expires). The local admin token `overnight up` writes does not expire."""
    max_queued_tasks_per_user: int = Field(default=100, ge=1)
    """Unfinished tasks (queued, preparing or running) one user may have; creating more gets 429."""


REGISTRIES = (
    "pypi.org", "files.pythonhosted.org", "registry.npmjs.org", "registry.yarnpkg.com", "deb.debian.org",
    "security.debian.org", "github.com", "codeload.github.com", "objects.githubusercontent.com", "proxy.golang.org",
    "sum.golang.org", "crates.io", "index.crates.io", "static.crates.io", "rubygems.org", "repo.maven.apache.org",
)  # fmt: skip
"""The package registries a set-up reaches by default when it goes through the egress proxy."""


class SandboxSettings(BaseModel):
    """Sandboxes: the backend, the image, the limits of each, and the set-up phase's network."""

    model_config = PART

    backend: Literal["auto", "docker", "bwrap"] = "auto"
    """auto: Docker when an engine answers, else bubblewrap."""
    image: str = "overnight-sandbox:bookworm-2"
    """Image sandboxes start from (`overnight image build` makes it, and its root filesystem for bubblewrap)."""
    repo_images: list[str] = Field(default_factory=list)
    """Images a repository may name in .overnight/image (JSON list of exact names already on the worker,
    Docker backend); empty: none, a repository that names another image than sandbox_image fails."""
    rootfs: Path | None = None
    """Root filesystem the bubblewrap backend runs on; empty means data_dir/rootfs/<image>."""
    limits: SandboxLimits = Field(default_factory=SandboxLimits)
    """What each sandbox may use (``OVERNIGHT_SANDBOX_MEMORY``, ``_PIDS``, ``_CPUS``, ...)."""
    setup_network: bool = True
    """Give the set-up phase (.overnight/setup.sh) a network."""
    ca_bundle: Path | None = None
    """PEM bundle that set-up sandboxes trust (pip, npm, git, curl, Python): a TLS-intercepting proxy's CA."""
    proxy: str | None = None
    """Proxy URL given to set-up sandboxes as HTTP_PROXY/HTTPS_PROXY (and lowercase)."""
    no_proxy: str | None = None
    """NO_PROXY for set-up sandboxes."""
    setup_allowed_networks: list[IPv4Network] = Field(default_factory=list)
    """Private ranges set-up sandboxes may reach anyway, e.g. an internal registry (JSON list of CIDRs); they
    reach no other private, link-local (metadata) or host address. Loopback and link-local cannot be allowed."""
    setup_firewall: Literal["install", "external"] = "install"
    """install: the worker (root, in the sandbox host's network namespace) installs the set-up network's
    firewall itself; external: `overnight firewall`, run where the Docker engine runs, keeps it (compose)."""
    agent_network: bool = False
    """Give the agent phase a network (off: commands the model writes reach nothing)."""
    egress_allowed_networks: list[IPv4Network] = Field(default_factory=list)
    """Private ranges the egress proxy (environments' allowlist and full policies) may connect to anyway, e.g. an
    internal registry an allowlist names (JSON list of CIDRs); loopback and link-local cannot be allowed."""
    setup_egress: Literal["firewall", "registries"] = "firewall"
    """How a set-up whose network policy is full (the default) goes out. firewall: the set-up network (public
    addresses, behind its firewall). registries: through the egress proxy, to setup_registries only. A set-up whose
    environment names an allowlist always goes through the egress proxy, to that list."""
    setup_registries: list[Domain] = Field(default_factory=lambda: list(REGISTRIES))
    """The package registries set-ups reach when setup_egress is registries (JSON list of host names; *.example.com
    for every host under example.com)."""
    setup_timeout: int = Field(default=900, gt=0)
    """Seconds the set-up phase may take."""
    env_max_age_hours: float = Field(default=72, gt=0)
    """Cached environments (set-up snapshots) older than this are rebuilt."""
    env_max_bytes: int = Field(default=20 * 2**30, gt=0)
    """Total size of cached environments; the least recently used go first."""

    @field_validator("egress_allowed_networks")
    @classmethod
    def _not_loopback_or_link_local(cls, value: list[IPv4Network]) -> list[IPv4Network]:
        never = (IPv4Network("127.0.0.0/8"), IPv4Network("169.254.0.0/16"))
        for network in value:
            if any(network.overlaps(each) for each in never):
                raise ValueError(f"{network}: loopback and link-local (metadata) ranges cannot be allowed")
        return value

    def proxy_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        if self.proxy:
            for name in ("HTTP_PROXY", "HTTPS_PROXY"):
                env[name] = env[name.lower()] = self.proxy
        if self.no_proxy:
            env["NO_PROXY"] = env["no_proxy"] = self.no_proxy
        return env


class WorkerSettings(BaseModel):
    """How a worker runs tasks, and what one task may cost it."""

    model_config = PART

    task_time_limit: int = Field(default=7200, gt=0)
    """Wall-clock seconds one task may take (set-up and agent together); past it the task fails."""
    task_max_attempts: int = Field(default=3, ge=1)
    """Executions of one task after worker crashes before it fails with "worker lost"."""
    max_active_tasks_per_user: int = Field(default=4, ge=1)
    """Tasks of one user preparing or running at once; more wait queued."""
    heartbeat_seconds: float = Field(default=5.0, gt=0)
    """How often a worker marks its task alive."""
    stale_seconds: float = Field(default=60.0, gt=0)
    """A preparing or running task whose heartbeat is older is taken as lost with its worker (counted only
    while the database was reachable: after an outage, workers get this long to beat again)."""
    database_retry_seconds: float = Field(default=300.0, ge=0)
    """How long a worker retries a task's writes (its final state included) while the database is
    unreachable, before it gives the task up to the reconciler."""
    reap_seconds: float = Field(default=60.0, gt=0)
    """How often each worker removes sandboxes left by dead workers (also at its start)."""
    reconcile_seconds: float = Field(default=30.0, gt=0)
    """How often each worker re-enqueues queued tasks the broker lost and recovers tasks of dead workers."""
    mirror_max_bytes: int = Field(default=20 * 2**30, gt=0)
    """Total size of the worker's bare repository mirrors; the least recently used go first."""
    git_author_name: str = "Overnight"
    """Author of the commit in the patch's mbox form."""
    git_author_email: str = "overnight@localhost"
    """Its e-mail address."""
    git_memory_limit: int = Field(default=2**30, ge=64 * 2**20)
    """Address space of each git command the worker runs over a task's data (uploads, patches): a patch that
    inflates past it fails its task, not the worker."""
    max_patch_bytes: int = Field(default=16 * 2**20, ge=1024)
    """Largest diff a task may produce (read out of its sandbox); a larger one fails the task."""

    @property
    def author(self) -> tuple[str, str]:
        return self.git_author_name, self.git_author_email


class GitHubSettings(BaseModel):
    """GitHub: the webhook that starts tasks, the credentials that publish them, and who may trigger."""

    model_config = PART

    webhook_secret: SecretStr | None = None
    """Secret of the GitHub webhook (X-Hub-Signature-256); with none set, every delivery is refused."""
    webhook_max_body_bytes: int = Field(default=5 * 2**20, ge=1024)
    """Largest webhook delivery accepted. It is read before its signature can be checked, so it is kept small:
    the events Overnight subscribes to carry bodies of at most 65,536 characters (GitHub's own cap is 25 MB)."""
    app_id: str | None = None
    """GitHub App id (App mode: the JWT's issuer; installation tokens per repository)."""
    private_key: SecretStr | None = None
    """The App's private key: PEM text, or the path of a PEM file."""
    token: SecretStr | None = None
    """Personal access token (single-user mode, instead of an App): reads, pushes and opens pull requests."""
    api_url: str = "https://api.github.com"
    """REST API root (GitHub Enterprise Server: https://HOST/api/v3)."""
    git_url: str | None = None
    """Where repositories are cloned from and pushed to, as BASE/OWNER/REPO.git; empty: derived from the API
    root (https://github.com, or https://HOST for Enterprise Server)."""
    trigger_label: str = Field(default="overnight", min_length=1, max_length=50)
    """Labelling an issue with this starts a task."""
    command: str = Field(default="/overnight", min_length=1, max_length=50)
    """A comment starting with this starts a task (the rest of the line: extra instructions)."""
    triggers: list[GitHubTrigger] = Field(default_factory=lambda: list(GITHUB_TRIGGERS))
    """Which deliveries may start tasks (JSON list): label (issues labeled), issue-comment (the command on an
    issue), pr-comment and review-comment (the command on a pull request Overnight opened: a follow-up)."""
    pr_comments_need_command: bool = True
    """Comments on a pull request Overnight opened start a follow-up only when they begin with the command
    (off: every comment there from someone allowed does, as review feedback)."""
    allowed_associations: list[str] = Field(default_factory=lambda: ["OWNER", "MEMBER", "COLLABORATOR"])
    """author_association values whose comments are considered at all (JSON list); GitHub's collaborator-permission
    API must then report write access."""
    repositories: list[str] = Field(default_factory=list)
    """Personal-token mode: the only repositories (OWNER/REPO) that may trigger; empty: any whose webhook
    carries the secret."""
    reply_unauthorised: bool = True
    """Answer a command from someone without write access with a short comment (off: ignore it silently)."""
    draft: bool = True
    """Open pull requests as drafts (falls back to ready when the repository does not support drafts)."""

    @field_validator("api_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("allowed_associations")
    @classmethod
    def _known_associations(cls, value: list[str]) -> list[str]:
        known = {"COLLABORATOR", "CONTRIBUTOR", "FIRST_TIMER", "FIRST_TIME_CONTRIBUTOR", "MANNEQUIN", "MEMBER",
                 "NONE", "OWNER"}  # fmt: skip
        upper = [item.upper() for item in value]
        unknown = sorted(set(upper) - known)
        if unknown:
            raise ValueError(f"unknown author_association {unknown}; known: {sorted(known)}")
        return upper

    @property
    def git_base(self) -> str:
        """BASE of BASE/OWNER/REPO.git."""
        if self.git_url:
            return self.git_url.rstrip("/")
        if self.api_url == "https://api.github.com":
            return "https://github.com"
        return self.api_url.removesuffix("/api/v3")


class SecretsSettings(BaseModel):
    """The server key environments' secrets are encrypted with (docs/environments.md)."""

    model_config = PART

    key: SecretStr | None = None
    """Fernet keys, comma-separated: the first encrypts, every one decrypts (to rotate: the new key first, then
    `overnight secrets rotate`, then drop the old one). `overnight secrets new-key` prints a key."""
    key_file: Path | None = None
    """A file holding such keys, one a line, read where a secret is set or used (the API, every worker);
    `overnight up` makes data_dir/secrets.key (mode 0600) when neither is set."""

    def box(self) -> SecretBox:
        """The keys as a SecretBox (raises SecretsUnavailable: none, or one that does not parse)."""
        return SecretBox.from_config(self.key.get_secret_value() if self.key else None, self.key_file)


class Settings(BaseSettings):
    """Server-side settings (API and worker)."""

    model_config = SettingsConfigDict(
        env_prefix="OVERNIGHT_", env_file=".env", env_ignore_empty=True, extra="forbid", use_attribute_docstrings=True
    )

    renamed: ClassVar[dict[str, str]] = {
        # Variables whose name is not OVERNIGHT_<PART>_<FIELD> (they were named before the parts were).
        "api.sse_ping_seconds": "OVERNIGHT_SSE_PING_SECONDS",
        "api.token_ttl_days": "OVERNIGHT_TOKEN_TTL_DAYS",
        "api.max_queued_tasks_per_user": "OVERNIGHT_MAX_QUEUED_TASKS_PER_USER",
        "llm.timeout": "OVERNIGHT_LLM_REQUEST_TIMEOUT",
        "agent.budget.price_input": "OVERNIGHT_PRICE_INPUT_PER_MTOK",
        "agent.budget.price_cached_input": "OVERNIGHT_PRICE_CACHED_INPUT_PER_MTOK",
        "agent.budget.price_output": "OVERNIGHT_PRICE_OUTPUT_PER_MTOK",
        "agent.command_timeout": "OVERNIGHT_SANDBOX_COMMAND_TIMEOUT",  # one variable: the sandbox's default too
        "worker.task_time_limit": "OVERNIGHT_TASK_TIME_LIMIT",
        "worker.task_max_attempts": "OVERNIGHT_TASK_MAX_ATTEMPTS",
        "worker.max_active_tasks_per_user": "OVERNIGHT_MAX_ACTIVE_TASKS_PER_USER",
        "worker.database_retry_seconds": "OVERNIGHT_DATABASE_RETRY_SECONDS",
        "worker.reap_seconds": "OVERNIGHT_REAP_SECONDS",
        "worker.reconcile_seconds": "OVERNIGHT_RECONCILE_SECONDS",
        "worker.mirror_max_bytes": "OVERNIGHT_MIRROR_MAX_BYTES",
        "worker.git_author_name": "OVERNIGHT_GIT_AUTHOR_NAME",
        "worker.git_author_email": "OVERNIGHT_GIT_AUTHOR_EMAIL",
        "worker.git_memory_limit": "OVERNIGHT_GIT_MEMORY_LIMIT",
        "worker.max_patch_bytes": "OVERNIGHT_MAX_PATCH_BYTES",
    }
    not_settings: ClassVar[frozenset[str]] = frozenset({
        # Fields of the parts' own types that the worker fills in itself.
        "llm.backoff_max", "llm.session_id", "sandbox.limits.startup_timeout", "sandbox.limits.control_root",
    })  # fmt: skip

    config_dir: Path = Field(default_factory=default_config_dir)
    """Where `overnight up` writes the local client config (server and admin token)."""
    data_dir: Path = Field(default_factory=default_data_dir)
    """Where the embedded database, the SQL broker file and task workspaces live (default: the user's data
    dir from platformdirs, e.g. ~/.local/share/overnight)."""
    database_url: str | None = None
    """SQLAlchemy URL. Empty means a SQLite file ``overnight.db`` in ``data_dir``."""
    broker_url: str | None = None
    """Celery broker URL. Empty means Redis at redis://127.0.0.1:6379/0 when it answers, else a
    SQLite-backed kombu transport beside the database (``overnight up`` decides and announces it)."""
    queue: str = "overnight"
    """Name of the Celery queue tasks are sent to and workers consume."""
    public_url: str | None = None
    """Address of this API as users reach it, for links in GitHub comments (empty: no link)."""

    allow_local_repos: bool = False
    """Accept local filesystem paths as repositories, from admins only (on for ``overnight up``, off in
    production)."""
    local_repo_roots: list[Path] = Field(default_factory=list)
    """Folders local repositories must be under (JSON list; symlinks resolved first; the data and config
    folders never count); empty: none. ``overnight up`` makes it the user's home folder when unset."""
    repo_access: dict[str, list[str]] = Field(default_factory=dict)
    """Which users' tasks may use the worker's credentials (git_credentials, its SSH keys and agent, its git
    credential helpers) for which repositories (JSON: {"https://github.com/acme/*": ["alice", "bob"]}; "*"
    for every user; admins always may). Other users naming a matching repository are refused (403); a
    repository no pattern matches is cloned without any credentials."""
    git_credentials: dict[str, SecretStr] = Field(default_factory=dict)
    """Tokens for private HTTPS repositories, by host (JSON: {"github.com": "TOKEN"}); never logged; used only
    for the users repo_access allows."""

    api: APISettings = Field(default_factory=APISettings)
    llm: LLMConfig = Field(default_factory=LLMConfig)
    sandbox: SandboxSettings = Field(default_factory=SandboxSettings)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    github: GitHubSettings = Field(default_factory=GitHubSettings)
    secrets: SecretsSettings = Field(default_factory=SecretsSettings)
    images: ImageSettings = Field(default_factory=ImageSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        assert isinstance(env_settings, EnvSettingsSource) and isinstance(dotenv_settings, EnvSettingsSource)
        # The environment over the .env file, as pydantic-settings orders its own; no secrets directory is used.
        return init_settings, *(VariablesSource(settings_cls, source) for source in (env_settings, dotenv_settings))

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'overnight.db'}"

    def sandbox_rootfs_for(self, image: str) -> Path:
        if self.sandbox.rootfs is not None:
            return self.sandbox.rootfs
        safe = image.replace("/", "_").replace(":", "_")
        return self.data_dir / "rootfs" / safe

    @property
    def environments_dir(self) -> Path:
        return self.data_dir / "environments"

    @property
    def mirrors_dir(self) -> Path:
        return self.data_dir / "mirrors"

    @property
    def workspaces_dir(self) -> Path:
        return self.data_dir / "workspaces"

    def sql_broker_url(self) -> str:
        """The kombu SQLAlchemy transport on a SQLite file beside the database."""
        return f"sqla+sqlite:///{self.data_dir / 'broker.sqlite'}"

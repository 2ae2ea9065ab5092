"""The one settings class of the server side (API, worker); the client's are in ``overnight.cli.settings``.

Every value is read from the environment with the ``OVERNIGHT_`` prefix (or a ``.env`` file) and
passed down explicitly; no other module reads ``os.environ`` (but ``overnight.cli.settings``, for the client's).
"""

from __future__ import annotations

from ipaddress import IPv4Network
from pathlib import Path
from typing import Literal

from platformdirs import user_config_path, user_data_path
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    SettingsConfigDict,
)

APP_NAME = "overnight"
GitHubTrigger = Literal["label", "issue-comment", "pr-comment", "review-comment"]
GITHUB_TRIGGERS: tuple[GitHubTrigger, ...] = ("label", "issue-comment", "pr-comment", "review-comment")


def default_data_dir() -> Path:
    return user_data_path(APP_NAME, appauthor=False)


def default_config_dir() -> Path:
    """The client's config dir (``overnight.cli.settings`` finds it the same way; the server side does not import
    the client package): where `overnight up` writes the CLI's server and token."""
    return user_config_path(APP_NAME, appauthor=False)


class Settings(BaseSettings):
    """Server-side settings (API and worker)."""

    model_config = SettingsConfigDict(
        env_prefix="OVERNIGHT_", env_file=".env", extra="ignore", use_attribute_docstrings=True
    )

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

    api_host: str = "127.0.0.1"
    """Address the API listens on."""
    api_port: int = Field(default=8177, ge=1, le=65535)
    """Port the API listens on."""
    sse_ping_seconds: float = Field(default=15, gt=0)
    """How often (seconds) a task's event stream sends a keep-alive comment, so that proxies and load
    balancers do not drop a follower while the task is quiet."""

    api_max_body_bytes: int = Field(default=2**20, ge=1024)
    """Largest request body of an API route (counted as it streams, chunked bodies too); more gets 413."""
    api_max_upload_bytes: int = Field(default=16 * 2**20, ge=1024)
    """Largest body of `POST /v1/tasks`, which may carry uploaded local changes (up to 10 MiB, base64)."""
    token_ttl_days: float = Field(default=90, ge=0)
    """Days a token from `overnight token create` stays valid unless --expires-in-days says otherwise
    (0: never expires). The local admin token `overnight up` writes does not expire."""
    max_queued_tasks_per_user: int = Field(default=100, ge=1)
    """Unfinished tasks (queued, preparing or running) one user may have; creating more gets 429."""

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

    llm_base_url: str = "http://127.0.0.1:8000/v1"
    """OpenAI-compatible base URL ending in /v1 (vLLM, Mistral's API, any compatible server)."""

    llm_provider: Literal["vllm", "mistral"] = "vllm"
    """Wire dialect: vllm (reasoning in the `reasoning` field) or mistral (La Plateforme: thinking chunks)."""
    llm_model: str = "mistral-medium-3.5"
    """Model name as the endpoint serves it (vLLM's --served-model-name)."""
    llm_api_key: SecretStr | None = None
    """Bearer key of the model endpoint (vLLM's --api-key), if it needs one."""
    llm_reasoning_effort: Literal["high", "none"] = "high"
    """Medium 3.5 accepts only "high" and "none"."""
    llm_temperature: float = Field(default=0.7, ge=0, le=2)
    """Sampling temperature (the model card's 0.7 for reasoning_effort="high")."""
    llm_top_p: float = Field(default=0.95, gt=0, le=1)
    """Nucleus sampling cut-off."""
    llm_max_tokens: int = Field(default=32768, gt=0)
    """Output budget of one model call, reasoning included (doubled once when a turn is cut off)."""
    llm_request_timeout: float = Field(default=600.0, gt=0)
    """Seconds one chat-completion request may take, streaming included."""
    llm_retries: int = Field(default=4, ge=0)
    """Attempts after the first on 429, 5xx and connection errors, with exponential backoff."""

    agent_max_steps: int = Field(default=100, gt=0)
    """Model calls one task may make before it fails with 'step budget exhausted'."""
    agent_max_wall_seconds: float = Field(default=3600, gt=0)
    """Wall-clock seconds the agent phase of one task may take."""
    agent_max_total_tokens: int = Field(default=30_000_000, gt=0)
    """Prompt plus completion tokens over all model calls of one task."""
    agent_max_cost: float | None = Field(default=None, gt=0)
    """Estimated cost cap per task (from the prices below); empty for none."""
    price_input_per_mtok: float = Field(default=0.0, ge=0)
    """Price per million uncached prompt tokens (Mistral's API: 1.50 USD for Medium 3.5)."""
    price_cached_input_per_mtok: float = Field(default=0.0, ge=0)
    """Price per million cached prompt tokens (Mistral's API: 0.15)."""
    price_output_per_mtok: float = Field(default=0.0, ge=0)
    """Price per million completion tokens (Mistral's API: 7.50)."""
    agent_compact_threshold: int = Field(default=200_000, gt=1000)
    """Context tokens at which the history is compacted into a summary (of a 256k window)."""
    agent_max_compactions: int = Field(default=1, ge=0)
    """Compactions one task may do; reaching the threshold again after them ends the task."""
    agent_tool_output_limit: int = Field(default=16_000, gt=200)
    """Characters of one tool result kept (head and tail) before it goes back to the model."""

    sandbox_backend: Literal["auto", "docker", "bwrap"] = "auto"
    """auto: Docker when an engine answers, else bubblewrap."""
    sandbox_image: str = "overnight-sandbox:bookworm-2"
    """Image sandboxes start from (`overnight image build` makes it, and its root filesystem for bubblewrap)."""
    sandbox_repo_images: list[str] = Field(default_factory=list)
    """Images a repository may name in .overnight/image (JSON list of exact names already on the worker,
    Docker backend); empty: none, a repository that names another image than sandbox_image fails."""
    sandbox_rootfs: Path | None = None
    """Root filesystem the bubblewrap backend runs on; empty means data_dir/rootfs/<image>."""
    sandbox_memory: str = "2g"
    """Memory limit of one sandbox; it gets no swap."""
    sandbox_pids: int = Field(default=512, gt=16)
    """Most processes one sandbox may hold."""
    sandbox_cpus: float = Field(default=2.0, gt=0)
    """CPUs one sandbox may use."""
    sandbox_command_timeout: int = Field(default=300, gt=0)
    """Default seconds one command in the sandbox may run."""
    sandbox_disk_limit: int = Field(default=10 * 2**30, ge=0)
    """Bytes a task's workspace (and a set-up's environment) may grow to; a command that fills it is killed
    and the task fails."""
    sandbox_disk_enforcement: Literal["kernel", "poll"] = "kernel"
    """kernel: the workspace and a set-up's environment are each a filesystem of their own as large as the
    limit (a root worker with loop devices; the worker refuses to start without them). poll: a once-a-second
    measurement that a fast writer passes by gigabytes, for hosts that cannot have kernel limits."""
    sandbox_tmp_size: str = "1g"
    """Size of the sandbox's /tmp (tmpfs)."""
    sandbox_home_size: str = "1g"
    """Size of the sandbox's home directory (tmpfs)."""
    sandbox_setup_network: bool = True
    """Give the set-up phase (.overnight/setup.sh) a network."""
    sandbox_ca_bundle: Path | None = None
    """PEM bundle that set-up sandboxes trust (pip, npm, git, curl, Python): a TLS-intercepting proxy's CA."""
    sandbox_proxy: str | None = None
    """Proxy URL given to set-up sandboxes as HTTP_PROXY/HTTPS_PROXY (and lowercase)."""
    sandbox_no_proxy: str | None = None
    """NO_PROXY for set-up sandboxes."""
    sandbox_setup_allowed_networks: list[IPv4Network] = Field(default_factory=list)
    """Private ranges set-up sandboxes may reach anyway, e.g. an internal registry (JSON list of CIDRs); they
    reach no other private, link-local (metadata) or host address. Loopback and link-local cannot be allowed."""
    sandbox_setup_firewall: Literal["install", "external"] = "install"
    """install: the worker (root, in the sandbox host's network namespace) installs the set-up network's
    firewall itself; external: `overnight firewall`, run where the Docker engine runs, keeps it (compose)."""
    sandbox_agent_network: bool = False
    """Give the agent phase a network (off: commands the model writes reach nothing)."""
    sandbox_setup_timeout: int = Field(default=900, gt=0)
    """Seconds the set-up phase may take."""
    sandbox_env_max_age_hours: float = Field(default=72, gt=0)
    """Cached environments (set-up snapshots) older than this are rebuilt."""
    sandbox_env_max_bytes: int = Field(default=20 * 2**30, gt=0)
    """Total size of cached environments; the least recently used go first."""
    task_time_limit: int = Field(default=7200, gt=0)
    """Wall-clock seconds one task may take (set-up and agent together); past it the task fails."""
    task_max_attempts: int = Field(default=3, ge=1)
    """Executions of one task after worker crashes before it fails with "worker lost"."""
    max_active_tasks_per_user: int = Field(default=4, ge=1)
    """Tasks of one user preparing or running at once; more wait queued."""
    worker_heartbeat_seconds: float = Field(default=5.0, gt=0)
    """How often a worker marks its task alive."""
    worker_stale_seconds: float = Field(default=60.0, gt=0)
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
    git_credentials: dict[str, SecretStr] = Field(default_factory=dict)
    """Tokens for private HTTPS repositories, by host (JSON: {"github.com": "TOKEN"}); never logged; used only
    for the users repo_access allows."""
    git_author_name: str = "Overnight"
    """Author of the commit in the patch's mbox form."""
    git_author_email: str = "overnight@localhost"
    """Its e-mail address."""
    git_memory_limit: int = Field(default=2**30, ge=64 * 2**20)
    """Address space of each git command the worker runs over a task's data (uploads, patches): a patch that
    inflates past it fails its task, not the worker."""
    max_patch_bytes: int = Field(default=16 * 2**20, ge=1024)
    """Largest diff a task may produce (read out of its sandbox); a larger one fails the task."""

    github_webhook_secret: SecretStr | None = None
    """Secret of the GitHub webhook (X-Hub-Signature-256); with none set, every delivery is refused."""
    github_webhook_max_body_bytes: int = Field(default=5 * 2**20, ge=1024)
    """Largest webhook delivery accepted. It is read before its signature can be checked, so it is kept small:
    the events Overnight subscribes to carry bodies of at most 65,536 characters (GitHub's own cap is 25 MB)."""
    github_app_id: str | None = None
    """GitHub App id (App mode: the JWT's issuer; installation tokens per repository)."""
    github_private_key: SecretStr | None = None
    """The App's private key: PEM text, or the path of a PEM file."""
    github_token: SecretStr | None = None
    """Personal access token (single-user mode, instead of an App): reads, pushes and opens pull requests."""
    github_api_url: str = "https://api.github.com"
    """REST API root (GitHub Enterprise Server: https://HOST/api/v3)."""
    github_git_url: str | None = None
    """Where repositories are cloned from and pushed to, as BASE/OWNER/REPO.git; empty: derived from the API
    root (https://github.com, or https://HOST for Enterprise Server)."""
    github_trigger_label: str = Field(default="overnight", min_length=1, max_length=50)
    """Labelling an issue with this starts a task."""
    github_command: str = Field(default="/overnight", min_length=1, max_length=50)
    """A comment starting with this starts a task (the rest of the line: extra instructions)."""
    github_triggers: list[GitHubTrigger] = Field(default_factory=lambda: list(GITHUB_TRIGGERS))
    """Which deliveries may start tasks (JSON list): label (issues labeled), issue-comment (the command on an
    issue), pr-comment and review-comment (the command on a pull request Overnight opened: a follow-up)."""
    github_pr_comments_need_command: bool = True
    """Comments on a pull request Overnight opened start a follow-up only when they begin with the command
    (off: every comment there from someone allowed does, as review feedback)."""
    github_allowed_associations: list[str] = Field(default_factory=lambda: ["OWNER", "MEMBER", "COLLABORATOR"])
    """author_association values whose comments are considered at all (JSON list); GitHub's collaborator-permission
    API must then report write access."""
    github_repositories: list[str] = Field(default_factory=list)
    """Personal-token mode: the only repositories (OWNER/REPO) that may trigger; empty: any whose webhook
    carries the secret."""
    github_reply_unauthorised: bool = True
    """Answer a command from someone without write access with a short comment (off: ignore it silently)."""
    github_draft: bool = True
    """Open pull requests as drafts (falls back to ready when the repository does not support drafts)."""
    public_url: str | None = None
    """Address of this API as users reach it, for links in GitHub comments (empty: no link)."""

    @field_validator(
        "database_url", "broker_url", "llm_api_key", "agent_max_cost", "sandbox_rootfs", "sandbox_ca_bundle",
        "sandbox_proxy", "sandbox_no_proxy", "github_webhook_secret", "github_app_id", "github_private_key",
        "github_token", "github_git_url", "public_url", mode="before",
    )  # fmt: skip
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        """``NAME=`` (an .env line left blank) means unset, not the empty string or the path "."."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("llm_base_url", "github_api_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("github_allowed_associations")
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
    def github_git_base(self) -> str:
        """BASE of BASE/OWNER/REPO.git."""
        if self.github_git_url:
            return self.github_git_url.rstrip("/")
        api = self.github_api_url
        if api == "https://api.github.com":
            return "https://github.com"
        return api.removesuffix("/api/v3")

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'overnight.db'}"

    def sandbox_rootfs_for(self, image: str) -> Path:
        if self.sandbox_rootfs is not None:
            return self.sandbox_rootfs
        safe = image.replace("/", "_").replace(":", "_")
        return self.data_dir / "rootfs" / safe

    def sandbox_proxy_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        if self.sandbox_proxy:
            for name in ("HTTP_PROXY", "HTTPS_PROXY"):
                env[name] = env[name.lower()] = self.sandbox_proxy
        if self.sandbox_no_proxy:
            env["NO_PROXY"] = env["no_proxy"] = self.sandbox_no_proxy
        return env

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

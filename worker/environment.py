"""The set-up phase: run the task's, its environment's or the repository's set-up script once, with the set-up
phase's network and time limit, snapshot the result, and start the next task on the same repository from it.
The task's environment (``worker.task_environment``) adds variables, secrets for the set-up command only (taken
out of its log, and looked for in what it leaves), and a part of the cache key.

The script runs in a sandbox of its own (network on when settings allow it); the agent's sandbox is
always a new one, without network unless settings say otherwise.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import git

from overnight.environments import DEFAULT_SETUP_NETWORK, AllowlistNetwork
from overnight.events import EventSink, SetupEvent
from sandbox.base import CommandResult, Sandbox, SandboxBackend, SandboxError, SandboxSpec
from sandbox.environments import (
    WORKSPACE_ARCHIVE,
    WORKSPACE_MODIFIED,
    WORKSPACE_PATHS,
    EnvironmentCache,
    environment_key,
)
from sandbox.output import truncate_middle
from sandbox.proxy import EgressLease, EgressProxy
from worker.autosetup import auto_setup_script
from worker.egress import BlockedReport, open_lease
from worker.errors import GitMemoryError, TaskFailure
from worker.hostgit import DEFAULT_GIT_MEMORY, workspace_tree
from worker.task_environment import TaskEnvironment, find_secrets

REPOSITORY_SETUP = ".overnight/setup.sh"
ENVIRONMENT_SETUP = "environment set-up script"
REPOSITORY_IMAGE = ".overnight/image"
IMAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9._/-]{0,200}(:[A-Za-z0-9._-]{1,128})?$")
MAX_SCRIPT_BYTES = 256 * 1024
LOG_LIMIT = 16_000
# After set-up: keep what it left in the workspace (restored on cache hits, kept out of the patch) and the
# home directory (the agent's home is a fresh tmpfs, seeded from this copy).
CAPTURE = f"""
set -e
{{ git ls-files -z --others --exclude-standard --directory; git ls-files -z --others --ignored --exclude-standard \\
  --directory; }} | sort -zu > /tmp/overnight-paths
git diff -z --name-only > /tmp/overnight-modified
: > {WORKSPACE_MODIFIED}
while IFS= read -r -d '' path; do
  printf '%s\\0%s\\0' "$path" "$(git hash-object -- "$path")" >> {WORKSPACE_MODIFIED}
done < /tmp/overnight-modified
cat /tmp/overnight-paths /tmp/overnight-modified | tar -C /workspace --null -T - -cf {WORKSPACE_ARCHIVE}
tr '\\0' '\\n' < /tmp/overnight-paths > {WORKSPACE_PATHS}
mkdir -p /opt/overnight/home
tar -C "$HOME" --exclude=./.cache --exclude=./.npm/_cacache -cf - . | tar -C /opt/overnight/home -xf -
"""
RESTORE = f"[ -f {WORKSPACE_ARCHIVE} ] && tar -C /workspace -xf {WORKSPACE_ARCHIVE} || true"
EXCLUDE = f"""[ -f {WORKSPACE_PATHS} ] && sed -e 's/[][*?!#\\\\]/\\\\&/g' -e 's|^|/|' {WORKSPACE_PATHS} \\
  >> .git/info/exclude || true"""


@dataclass(kw_only=True)
class SetupPolicy:
    image: str
    network: bool
    timeout: float
    lifetime: float
    ca_bundle: Path | None = None
    """A PEM bundle set-up sandboxes trust (for registries behind a TLS-intercepting proxy)."""
    proxy_env: dict[str, str] = field(default_factory=dict)
    """HTTP(S)_PROXY / NO_PROXY for set-up sandboxes, when the host reaches registries through a proxy."""
    repo_images: tuple[str, ...] = ()
    """Images a repository may name in .overnight/image (the operator's list); none: only ``image``."""
    egress: Literal["firewall", "registries"] = "firewall"
    """How a set-up whose policy is full goes out: the set-up network, or the egress proxy to ``registries``."""
    registries: tuple[str, ...] = ()


@dataclass(kw_only=True, frozen=True)
class Environment:
    ref: str | None
    """What the agent's sandbox starts from: an environment snapshot or image; None for the base image."""
    note: str | None = None
    """Something the model should know (an automatic set-up that failed)."""


def read_workspace_file(workspace: Path, relative: str, *, limit: int = MAX_SCRIPT_BYTES) -> bytes | None:
    """A regular file of the checkout, read without following symlinks out of it (None if absent)."""
    path = workspace / relative
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not resolved.is_relative_to(workspace.resolve()):
        raise TaskFailure(f"set-up: {relative} points outside the repository")
    fd = os.open(resolved, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return None
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise TaskFailure(f"set-up: {relative} is larger than {limit} bytes")
    return data


def repository_image(workspace: Path, *, default: str, backend: str, allowed: tuple[str, ...] = ()) -> str:
    """The image the repository asks for in .overnight/image (one name), else ``default``.

    The image must be in ``allowed`` (OVERNIGHT_SANDBOX_REPO_IMAGES: a repository must not pick another
    repository's environment snapshot, or any image the worker happens to hold), already be on the worker
    (nothing is pulled) and carry python3 for the exec server.
    """
    data = read_workspace_file(workspace, REPOSITORY_IMAGE, limit=512)
    if data is None:
        return default
    name = data.decode("utf-8", errors="replace").strip()
    if not IMAGE_NAME.match(name):
        raise TaskFailure(f"{REPOSITORY_IMAGE}: {name[:80]!r} is not an image name")
    if name == default:
        return default
    if name not in allowed:
        raise TaskFailure(f"{REPOSITORY_IMAGE} names image {name}, which is not in OVERNIGHT_SANDBOX_REPO_IMAGES "
                          "(the images this server lets a repository choose)")  # fmt: skip
    if backend != "docker":
        raise TaskFailure(f"{REPOSITORY_IMAGE} names image {name}, but this worker's {backend} backend runs only "
                          "the base root filesystem")  # fmt: skip
    return name


def setup_key(
    *, image: str, repository: str, script_path: str, script: bytes, workspace: Path, owner: str, memory: int,
    environment: str = "",
) -> str:  # fmt: skip
    """The cache key of a set-up about to run in ``workspace``: everything it could read (see
    ``environment_key``). Work beyond the base commit (an upload, a parent task's patch) makes it ``owner``'s."""
    try:
        tree, commit, commit_tree = workspace_tree(workspace, memory=memory)
    except GitMemoryError as exc:
        raise TaskFailure(f"set-up: could not hash the workspace: {exc}") from exc
    except git.GitCommandError as exc:
        raise TaskFailure(f"set-up: could not hash the workspace: {str(exc.stderr).strip()[-200:]}") from exc
    return environment_key(image=image, repository=repository, script_path=script_path, script=script,
                           commit=commit or "", tree=tree, owner=None if tree == commit_tree else owner,
                           environment=environment)  # fmt: skip


@dataclass(kw_only=True, frozen=True)
class SetupScript:
    """A set-up to run: its text, where it comes from (a path of the repository, or "automatic set-up")."""

    text: bytes
    path: str
    auto: bool = False
    """Generated by the automatic set-up (run as it is, not as a file of the repository)."""
    inline: bool = False
    """The environment's script (run as it is, not as a file of the repository)."""

    @property
    def command(self) -> str:
        inline = self.auto or self.inline
        return self.text.decode("utf-8", errors="replace") if inline else f"bash {shlex.quote(self.path)}"


def setup_script(workspace: Path, setup_path: str | None, override: str | None = None) -> SetupScript | None:
    """The task's set-up script, else the environment's ``override``, else the repository's
    (``.overnight/setup.sh``), else the automatic set-up; None when there is nothing to run."""
    if override is not None and not setup_path:
        return SetupScript(text=override.encode(), path=ENVIRONMENT_SETUP, inline=True)
    path = setup_path or REPOSITORY_SETUP
    text = read_workspace_file(workspace, path)
    if text is not None:
        return SetupScript(text=text, path=path)
    if setup_path:
        raise TaskFailure(f"set-up script {setup_path} not found in the repository")
    requirements = sorted(p.name for p in workspace.glob("requirements*.txt") if p.is_file())
    generated = auto_setup_script(lambda name: read_workspace_file(workspace, name), requirements)
    return None if generated is None else SetupScript(text=generated.encode(), path="automatic set-up", auto=True)


def prepare_environment(
    *,
    task_id: str,
    repository: str,
    workspace: Path,
    setup_path: str | None,
    backend: SandboxBackend,
    cache: EnvironmentCache,
    policy: SetupPolicy,
    emit: EventSink,
    on_sandbox: Callable[[Sandbox | None], None] = lambda sandbox: None,
    owner: str | None = None,
    git_memory: int = DEFAULT_GIT_MEMORY,
    task_env: TaskEnvironment | None = None,
    egress: EgressProxy | None = None,
) -> Environment:
    """Where the agent's sandbox starts: after the set-up script, the automatic set-up, or neither.

    ``owner`` (the task's user) keys a snapshot whose tree holds uploaded or follow-up work: only that user's
    tasks on the same tree reuse it (without an owner, only this task). ``task_env``: the task's environment."""
    image = repository_image(workspace, default=policy.image, backend=backend.name, allowed=policy.repo_images)
    base = None if image == policy.image else image
    script = setup_script(workspace, setup_path, task_env.script if task_env else None)
    if script is None:
        return Environment(ref=base)
    key = setup_key(image=image, repository=repository, script_path=script.path, script=script.text,
                    workspace=workspace, owner=owner or f"task:{task_id}", memory=git_memory,
                    environment=task_env.key_part() if task_env else "")  # fmt: skip
    cached = cache.lookup(key)
    if cached is not None:
        given = _given(task_env, ran=False)
        emit(SetupEvent(script=script.path, auto=script.auto, cached=True, environment=key, **given))
        return Environment(ref=cached)
    started = time.monotonic()
    with ExitStack() as stack:  # the lease on the egress proxy (if any) outlives the sandbox
        proxied = _setup_egress(policy, task_env)
        lease = open_lease(egress, task_id, proxied, stack, phase="set-up") if proxied else None
        sandbox = backend.start(_setup_spec(task_id, workspace, base, policy, task_env, lease))
        report = BlockedReport(lease, emit, phase="setup") if lease else None
        try:
            on_sandbox(sandbox)  # a cancel kills the set-up's command too (or, found already, stops it starting)
            return _run_setup(sandbox, script, key=key, base=base, cache=cache, policy=policy, emit=emit,
                              started=started, task_env=task_env, report=report)  # fmt: skip
        except SandboxError as exc:
            raise TaskFailure(f"set-up: {exc}") from exc
        finally:
            on_sandbox(None)
            sandbox.close()


def _setup_network(policy: SetupPolicy, task_env: TaskEnvironment | None) -> bool:
    """The operator's set-up network, unless the environment says none (allowlists: part 2, the egress proxy)."""
    return policy.network and (task_env is None or task_env.setup_network.mode != "none")


def _setup_egress(policy: SetupPolicy, task_env: TaskEnvironment | None) -> AllowlistNetwork | None:
    """The allowlist a set-up reaches through the egress proxy: its environment's, or the operator's registries
    for a full policy when OVERNIGHT_SANDBOX_SETUP_EGRESS=registries; None: no network, or the set-up network."""
    if not _setup_network(policy, task_env):
        return None
    chosen = task_env.setup_network if task_env else DEFAULT_SETUP_NETWORK
    if isinstance(chosen, AllowlistNetwork):
        return chosen
    if policy.egress != "registries":
        return None
    if not policy.registries:
        raise TaskFailure("set-up: OVERNIGHT_SANDBOX_SETUP_EGRESS is registries, but "
                          "OVERNIGHT_SANDBOX_SETUP_REGISTRIES names none")  # fmt: skip
    return AllowlistNetwork(domains=list(policy.registries))


def _setup_spec(
    task_id: str, workspace: Path, base: str | None, policy: SetupPolicy, task_env: TaskEnvironment | None,
    lease: EgressLease | None,
) -> SandboxSpec:  # fmt: skip
    network = _setup_network(policy, task_env)
    direct = network and lease is None  # the set-up network; through the egress proxy, the backend sets HTTP_PROXY
    env = {**(policy.proxy_env if direct else {}), **(task_env.variables if task_env else {})}
    return SandboxSpec(task_id=task_id, workspace=workspace, network=direct, purpose="setup", lifetime=policy.lifetime,
                       image=base, ca_bundle=policy.ca_bundle if network else None, env=env,
                       egress=lease.folder if lease else None)  # fmt: skip


def _given(task_env: TaskEnvironment | None, *, ran: bool = True) -> dict[str, Any]:
    """What a set-up event says of the environment: its pattern, the names of the secrets given (a set-up that
    ran), or why none were."""
    if task_env is None:
        return {}
    return {"pattern": task_env.pattern, "secrets": (sorted(task_env.secrets) or None) if ran else None,
            "secrets_withheld": task_env.withheld}  # fmt: skip


def _run_setup(
    sandbox: Sandbox, script: SetupScript, *, key: str, base: str | None, cache: EnvironmentCache,
    policy: SetupPolicy, emit: EventSink, started: float, task_env: TaskEnvironment | None,
    report: BlockedReport | None = None,
) -> Environment:  # fmt: skip
    """Run the set-up in its sandbox (the environment's secrets in the command's variables only), say how it went
    (secrets redacted), check that no secret outlives it, and snapshot what it left under ``key``. A failed script
    ends the task; a failed automatic set-up becomes a note for the model."""
    redact = task_env.redact if task_env else str
    result = sandbox.run(script.command, env=task_env.secrets if task_env else None, timeout=policy.timeout,
                         output_limit=LOG_LIMIT)  # fmt: skip
    log = truncate_middle(redact(result.stdout + result.stderr), LOG_LIMIT)
    if report is not None:  # what the egress proxy refused it, before its event (and before a failure ends the task)
        report.flush()
    emit(SetupEvent(
        script=script.path, auto=script.auto, cached=False, network=_setup_network(policy, task_env),
        commands=script.text.decode("utf-8", errors="replace") if script.auto else None, exit_code=result.exit_code,
        timed_out=result.timed_out, duration=round(time.monotonic() - started, 2), log=log, **_given(task_env),
    ))  # fmt: skip
    failure = _failure(result, script, policy, redact)
    if failure and not script.auto:
        withheld = task_env.withheld if task_env else None
        raise TaskFailure(failure + (f" (the environment's secrets were not given: {withheld})" if withheld else ""))
    if task_env is not None:
        find_secrets(sandbox, task_env)
    if failure:
        return Environment(ref=base, note=f"The {failure}. Its log ended with:\n{log[-2000:]}")
    capture = sandbox.run(CAPTURE, timeout=600)
    if capture.exit_code != 0:
        raise TaskFailure(f"set-up: could not save its result: {capture.stderr.strip()[-200:]}")
    return Environment(ref=cache.store(sandbox, key))


def _failure(
    result: CommandResult, script: SetupScript, policy: SetupPolicy, redact: Callable[[str], str]
) -> str | None:
    if not result.timed_out and result.exit_code == 0:
        return None
    if result.timed_out:
        return f"set-up timed out after {policy.timeout:g} s ({script.path})"
    last = redact((result.stderr or result.stdout).strip()).splitlines()[-1:] or [""]
    return f"set-up failed ({script.path} exited {result.exit_code}): {last[0][:200]}"


def enter_environment(sandbox: Any, environment: str | None) -> None:
    """In the agent's sandbox: restore the set-up's workspace files and keep them out of the patch."""
    if environment is None:
        return
    result = sandbox.run(f"{RESTORE}\n{EXCLUDE}", timeout=600)
    if result.exit_code != 0:
        raise TaskFailure(f"could not restore the set-up environment: {result.stderr.strip()[-200:]}")

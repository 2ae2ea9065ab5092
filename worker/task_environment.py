"""What a task's environment (docs/environments.md) gives it: the set-up script override, variables for the
set-up and the agent, secrets for the set-up only, the set-up's network policy, and a part of the set-up cache key.

Secrets go only where trust already goes: to the task of an admin, of one of the environment's owners, of a user
OVERNIGHT_REPO_ACCESS lets use the worker's credentials for the repository, or of a GitHub sender with write
access — and never to a task that continues another (a follow-up, a command on Overnight's pull request), whose
set-up would run code the model wrote. After a set-up that had them, ``find_secrets`` looks for every value in
what outlives the set-up sandbox; ``redact`` takes them out of the set-up's log and failure reason.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy.orm import Session

import store.environments
from overnight.access import AccessDenied, RepoAccess, Requester
from overnight.environments import (
    DEFAULT_AGENT_NETWORK,
    DEFAULT_SETUP_NETWORK,
    MIN_SECRET_LENGTH,
    Policy,
    stored_policy,
)
from overnight.secrets import SecretBox, SecretsUnavailable
from sandbox.base import Sandbox
from sandbox.runtime import BASE_ENV, WORKDIR
from store.models import Environment, GitHubLink, Task
from worker.errors import TaskFailure

SCAN_ROOTS = (WORKDIR, "/opt/overnight", BASE_ENV["HOME"])
"""What outlives a set-up sandbox: the workspace (the agent's next), the environment (its snapshot, with the
home's copy) and the home (copied into it)."""
SCAN_PREFIX = "OVERNIGHT_SCAN_"
# Run by the image's own python (read-only root; -I -S: no variable, path or site file of the set-up counts).
SCANNER = r"""
import json, os, sys
needles = {k: os.environ[k].encode() for k in os.environ if k.startswith("OVERNIGHT_SCAN_")}
overlap = max(len(n) for n in needles.values()) - 1
found, unreadable = [], []
def check(path):
    try:
        with open(path, "rb") as handle:
            tail = b""
            while chunk := handle.read(1 << 20):
                data = tail + chunk
                for key, needle in needles.items():
                    if needle in data and [key, path] not in found:
                        found.append([key, path])
                tail = data[-overlap:] if overlap else b""
    except OSError:
        unreadable.append(path)
for root in sys.argv[1:]:
    for folder, dirs, files in os.walk(root, onerror=lambda exc: unreadable.append(exc.filename)):
        for name in dirs + files:
            path = os.path.join(folder, name)
            for key, needle in needles.items():
                if needle in os.fsencode(name):
                    found.append([key, path])
            if name in files and os.path.isfile(path) and not os.path.islink(path):
                check(path)
        if len(found) + len(unreadable) > 20:
            break
print(json.dumps({"found": found[:20], "unreadable": unreadable[:20]}))
"""
OMISSION = re.compile(r"\n\[\.\.\. \d+ lines / \d+ bytes omitted \.\.\.\]\n")


@dataclass(kw_only=True, frozen=True)
class TaskEnvironment:
    pattern: str
    script: str | None = None
    """Run instead of the repository's set-up."""
    variables: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    """Name → value, for the set-up command only (empty when withheld)."""
    versions: dict[str, str] = field(default_factory=dict)
    """Name → version of the secrets given (the cache key holds these, never a value or its hash)."""
    withheld: str | None = None
    """Why the environment's secrets were not given to this task (None: given, or it has none)."""
    setup_network: Policy = DEFAULT_SETUP_NETWORK
    agent_network: Policy = DEFAULT_AGENT_NETWORK

    def key_part(self) -> str:
        """What of the environment changes a set-up's result, for its cache key."""
        data = {"pattern": self.pattern, "script": self.script, "variables": self.variables,
                "secrets": self.versions, "withheld": self.withheld is not None,
                "setup_network": self.setup_network.model_dump()}  # fmt: skip
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def redact(self, text: str) -> str:
        """``text`` with every secret (and every line of a multi-line one) as ``[secret NAME]``, also the part of
        one on either side of a cut (``[... omitted ...]``)."""
        for name, value in sorted(self.secrets.items(), key=lambda item: -len(item[1])):
            lines = [line for line in value.splitlines() if len(line.strip()) >= MIN_SECRET_LENGTH]
            for piece in sorted({value, value.strip(), *lines}, key=len, reverse=True):
                if piece:
                    text = text.replace(piece, f"[secret {name}]")
            text = _redact_cuts(text, name, value)
        return text


def _redact_cuts(text: str, name: str, value: str) -> str:
    """A secret's head just before an omission marker, or its tail just after one."""
    pieces = OMISSION.split(text)
    markers = OMISSION.findall(text)
    for index in range(len(markers)):
        before, after = pieces[index], pieces[index + 1]
        for size in range(len(value) - 1, 3, -1):
            if before.endswith(value[:size]):
                pieces[index] = before[:-size] + f"[secret {name}, cut]"
                break
        for size in range(len(value) - 1, 3, -1):
            if after.startswith(value[-size:]):
                pieces[index + 1] = f"[secret {name}, cut]" + after[size:]
                break
    return "".join(piece + (markers[i] if i < len(markers) else "") for i, piece in enumerate(pieces))


def task_environment(
    session: Session, task_id: str, *, owner: Requester | None, access: RepoAccess, open_box: Callable[[], SecretBox]
) -> TaskEnvironment | None:
    """The environment the task's repository matches, with its secrets opened if the task may have them."""
    task = session.get(Task, task_id)
    if task is None:
        return None
    row = store.environments.matching_environment(session, task.repo)
    if row is None:
        return None
    withheld = None
    if row.secrets:
        withheld = _withheld(row, task, owner, access, from_github=session.get(GitHubLink, task_id) is not None)
    secrets, versions = ({}, {}) if withheld is not None else _open(row, open_box)
    return TaskEnvironment(
        pattern=row.pattern, script=row.setup_script, variables=dict(row.variables or {}), secrets=secrets,
        versions=versions, withheld=withheld, setup_network=stored_policy(row.setup_network, DEFAULT_SETUP_NETWORK),
        agent_network=stored_policy(row.agent_network, DEFAULT_AGENT_NETWORK),
    )  # fmt: skip


def _withheld(
    row: Environment, task: Task, owner: Requester | None, access: RepoAccess, *, from_github: bool
) -> str | None:
    if task.parent_id is not None:
        return "the task continues another, so its set-up runs code the model wrote"
    if owner is None:
        return "the task has no user"
    if owner.is_admin or owner.name in (row.owners or []) or from_github:
        return None
    try:
        if not task.repo.startswith("/") and access.check_remote(task.repo, owner) == "credentials":
            return None
    except AccessDenied:
        pass
    return f"{owner.name} is not an owner of the environment nor listed for the repository in OVERNIGHT_REPO_ACCESS"


def _open(row: Environment, open_box: Callable[[], SecretBox]) -> tuple[dict[str, str], dict[str, str]]:
    if not row.secrets:
        return {}, {}
    try:
        box = open_box()
        values = {
            secret.name: box.open(secret.ciphertext, pattern=row.pattern, name=secret.name) for secret in row.secrets
        }
    except SecretsUnavailable as exc:
        raise TaskFailure(f"set-up: the environment's secrets cannot be opened on this worker: {exc}") from exc
    return values, {secret.name: secret.version for secret in row.secrets}


def find_secrets(sandbox: Sandbox, environment: TaskEnvironment) -> None:
    """Fail the task when a secret's value is in what outlives the set-up sandbox (or a file there cannot be read,
    and so cannot be checked). The message names the secret and the file, never the value."""
    if not environment.secrets:
        return
    names = dict(enumerate(environment.secrets))
    env = {f"{SCAN_PREFIX}{index}": environment.secrets[name] for index, name in names.items()}
    result = sandbox.run(
        f"/usr/bin/python3 -I -S -c {shlex.quote(SCANNER)} {' '.join(SCAN_ROOTS)}", env=env, timeout=900
    )
    try:
        report = json.loads(result.stdout)
    except ValueError:
        raise TaskFailure(
            f"set-up: could not check its result for secrets: {environment.redact(result.stderr)[-200:]}"
        ) from None
    if report["found"]:
        key, path = report["found"][0]
        name = names[int(key.removeprefix(SCAN_PREFIX))]
        raise TaskFailure(f"set-up left secret {name} in {path}, where the agent would find it: read it from its "
                          "variable, or keep files that hold it under /tmp, which is not kept")  # fmt: skip
    if report["unreadable"]:
        raise TaskFailure(f"set-up left {report['unreadable'][0]}, which cannot be read and so cannot be checked for "
                          "secrets")  # fmt: skip

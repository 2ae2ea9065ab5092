"""How the instances' set-ups reach their tasks: through an environment (docs/environments.md) the eval keeps on
each mirror's path, whose script runs the set-up of the instance whose base commit is checked out. A task names one
repository and the environment of a repository is one script, while SWE-bench's set-ups differ per version of a
repository: so the script dispatches on the commit. The grading finds the same environment, so the same cache key,
and starts from the set-up's snapshot."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy.orm import Session

import store.environments
from overnight.admin.eval.instances import Instance, InstanceError, RepoSource
from overnight.admin.eval.specs import setup_commands
from overnight.environments import check_script, pattern_key
from store.models import Environment

MARKER = "# overnight eval: instance set-up by base commit"
"""The first line of an environment script the eval made (and may change or remove on its next run)."""


@dataclass(frozen=True, kw_only=True)
class RepoSetup:
    repo: str
    pattern: str
    """The environment's pattern: the mirror's path, as the task names the repository."""
    script: str | None
    """None: no instance of the repository has a set-up (an environment the eval made there is removed)."""


def dispatch_script(repo: str, instances: list[Instance]) -> str | None:
    """One script for every instance of ``repo`` in the file: a function per distinct set-up, chosen by the commit
    checked out (an abbreviated base commit matches as a prefix)."""
    with_spec = [i for i in instances if i.repo == repo and i.spec is not None and i.spec.has_setup]
    without = [i.instance_id for i in instances if i.repo == repo and (i.spec is None or not i.spec.has_setup)]
    if not with_spec:
        return None
    if without:
        raise InstanceError(f"{repo}: {', '.join(without[:3])} {'has' if len(without) == 1 else 'have'} no set-up "
                            f"while {with_spec[0].instance_id} has one: give every instance of a repository a set-up "
                            "(a spec), or none")  # fmt: skip
    bodies: dict[str, list[str]] = {}
    chosen: dict[str, str] = {}
    for instance in with_spec:
        assert instance.spec is not None
        body = setup_commands(instance.spec, environment_commit=instance.environment_setup_commit)
        if chosen.get(instance.base_commit, body) != body:
            raise InstanceError(f"{repo}: two instances at base commit {instance.base_commit} have different set-ups")
        chosen[instance.base_commit] = body
        bodies.setdefault(body, []).append(instance.base_commit)
    shown = re.sub(r"[^\w./-]", "?", repo)
    parts = [MARKER, f"# repository {shown}; made by `overnight eval`, changed or removed by its next run", "set -e"]
    for number, body in enumerate(bodies, 1):
        parts += [f"overnight_eval_setup_{number}() {{", "set -ex", body, "}"]
    parts += ["head=$(git rev-parse HEAD)", 'case "$head" in']
    for number, commits in enumerate(bodies.values(), 1):
        prefixes = "|".join(f"{commit}*" for commit in dict.fromkeys(commits))
        parts.append(f"  {prefixes}) overnight_eval_setup_{number} ;;")
    parts += [
        '  *) echo "overnight eval: no instance of this repository is at commit $head (this environment gives '
        "only the eval's instances their set-up)\" >&2; exit 1 ;;",
        "esac",
    ]
    return "\n".join(parts) + "\n"


def plan_setups(instances: list[Instance], chosen: list[Instance], source: RepoSource) -> list[RepoSetup]:
    """The environment each repository of the ``chosen`` instances needs. Its script covers every instance of the
    repository in the file, not only those chosen: the script is part of the set-up's cache key, and a run of a
    subset finds the environments a run of the whole file made."""
    repos = list(dict.fromkeys(instance.repo for instance in chosen))
    scripts = {repo: dispatch_script(repo, instances) for repo in repos}
    if any(scripts.values()) and source.mirrors is None:
        raise InstanceError("instances with a set-up need --repos: the eval gives them their set-up through an "
                            "environment on each mirror's path, and one on a repository's address would also set up "
                            "every other task on it")  # fmt: skip
    planned = []
    for repo, script in scripts.items():
        if script is not None:
            try:
                check_script(script)
            except ValueError as exc:
                raise InstanceError(f"{repo}: the instances' set-up script: {exc}") from exc
        pattern = pattern_key(source.locate(repo)) if source.mirrors is not None else ""
        planned.append(RepoSetup(repo=repo, pattern=pattern, script=script))
    return planned


def apply_setups(session: Session, setups: list[RepoSetup]) -> None:
    """Make, change or remove the eval's environments; refuses (before changing any) to touch one it did not make."""
    rows = {setup.pattern: store.environments.environment_by_pattern(session, setup.pattern) for setup in setups
            if setup.pattern}  # fmt: skip
    for setup in setups:
        row = rows.get(setup.pattern)
        if setup.script is not None and row is not None and not _made_by_eval(row):
            raise InstanceError(f"an environment for {setup.pattern} exists that the eval did not make; the eval gives "
                                f"{setup.repo}'s instances their set-up through one of its own there: remove that "
                                "environment or use another mirror folder")  # fmt: skip
    for setup in setups:
        row = rows.get(setup.pattern)
        if setup.script is None:
            if row is not None and _made_by_eval(row):
                session.delete(row)
            continue
        if row is None:
            row = store.environments.create_environment(session, setup.pattern)
        if row.setup_script != setup.script:
            store.environments.update_environment(row, {"setup_script": setup.script})


def _made_by_eval(row: Environment) -> bool:
    return (row.setup_script or "").startswith(MARKER)

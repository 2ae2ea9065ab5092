"""Set-up benchmark: cold set-up vs a cached environment for a dependency-heavy real project (humanize,
whose automatic set-up installs it editable with its `tests` extra from PyPI, through the proxy).

Measures, through the real pipeline (run_task, Docker backend), the time from submit (the task row
created) to the scripted model's first request, over several runs in one session.

    python -m bench.setup [--runs 3] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from agent.scripted import ScriptedCall, ScriptedModel, ScriptedModelServer, ScriptedTurn
from sandbox.docker import DockerConfig
from sandbox.environments import EnvironmentCache
from sandbox.image import DEFAULT_IMAGE
from store.engine import make_engine, migrate
from tests.e2e.test_real_projects import HOST_BUNDLE, PROJECTS, release_repository
from tests.worker.conftest import make_context, outcome, submit
from worker.environment import SetupPolicy
from worker.pipeline import run_task

FINISH = ScriptedTurn(
    tool_calls=[ScriptedCall(name="finish", arguments={"summary": "-", "pr_title": "bench", "pr_body": "-"})]
)


def submit_to_first_request(tmp: Path, repo: Path, cache_dir: Path) -> float:
    tmp.mkdir(parents=True, exist_ok=True)
    engine = make_engine(f"sqlite:///{tmp / 'bench.db'}")
    migrate(engine)
    backend = DockerConfig(image=DEFAULT_IMAGE).build()
    with ScriptedModelServer(ScriptedModel([FINISH])) as server:
        context = make_context(engine, backend, server.base_url, tmp)
        context.environments = EnvironmentCache(cache_dir, backend, max_age=3600, max_bytes=50 * 2**30)
        context.setup = SetupPolicy(image=DEFAULT_IMAGE, network=True, timeout=900, lifetime=3600,
                                    ca_bundle=HOST_BUNDLE)  # fmt: skip
        started = time.time()
        task_id = submit(engine, str(repo))
        run_task(task_id, context)
        task, _, _ = outcome(engine, task_id)
        assert task.state == "succeeded", task.failure_reason
        return server.state.received_at[0] - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    project = next(p for p in PROJECTS if p.name == "humanize")
    cold, cached = [], []
    with tempfile.TemporaryDirectory(prefix="bench-setup-") as name:
        tmp = Path(name)
        repo = release_repository(project, tmp / "repo")
        for run in range(args.runs):
            cache_dir = tmp / f"cache-{run}"
            cold.append(submit_to_first_request(tmp / f"cold-{run}", repo, cache_dir))
            cached.append(submit_to_first_request(tmp / f"cached-{run}", repo, cache_dir))
            backend = DockerConfig(image=DEFAULT_IMAGE).build()
            for entry in EnvironmentCache(cache_dir, backend, max_age=3600, max_bytes=50 * 2**30).entries():
                backend.remove_environment(entry.ref)
    result = {
        "project": project.artifact,
        "runs": args.runs,
        "cold_s_median": statistics.median(cold),
        "cached_s_median": statistics.median(cached),
        "cold_s": cold,
        "cached_s": cached,
    }
    result["ratio"] = result["cold_s_median"] / result["cached_s_median"]
    print(f"{project.artifact}: submit → first model request over {args.runs} runs")
    print(f"  cold set-up (pip from PyPI):  median {result['cold_s_median']:.2f} s  {[round(x, 2) for x in cold]}")
    print(f"  cached environment:           median {result['cached_s_median']:.2f} s  {[round(x, 2) for x in cached]}")
    print(f"  {result['ratio']:.1f}x faster from the cache")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

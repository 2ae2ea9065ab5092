"""Sandbox benchmark: readiness, per-command overhead, set-up cold vs cached, memory of idle sandboxes.

For each backend (Docker, bubblewrap) in one run:
- ready: from the start request to the first command's output, from the base image and from a cached
  environment (median, p95);
- per-command overhead: `true` through the exec server (plain and session calls) against a local
  `bash -c true` measured in the same run;
- set-up cold vs cached, for a repository whose .overnight/setup.sh makes a venv and installs a few
  packages from a wheel folder in the repository (no network): from "task starts" to "agent sandbox ready";
- memory of 32 idle sandboxes (cgroup usage, summed).

    python -m bench.sandbox [--backends docker bwrap] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from overnight.settings import default_data_dir
from sandbox.base import SandboxBackend, SandboxSpec
from sandbox.bwrap import BwrapConfig
from sandbox.disk import remove_folder
from sandbox.docker import DockerConfig, DockerSandbox
from sandbox.environments import EnvironmentCache
from sandbox.image import DEFAULT_IMAGE, rootfs_path
from worker.environment import SetupPolicy, enter_environment, prepare_environment

WHEELS = ("attrs==25.3.0", "six==1.17.0", "idna==3.10", "packaging==25.0", "iniconfig==2.1.0")
SETUP = """set -e
python3 -m venv /opt/overnight/venv
/opt/overnight/venv/bin/pip install --quiet --no-index --find-links wheels attrs six idna packaging iniconfig
"""
WHEEL_CACHE = Path.home() / ".cache" / "overnight-bench" / "wheels"


def stats(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "median_ms": statistics.median(ordered) * 1000,
        "p95_ms": ordered[min(round(0.95 * (len(ordered) - 1)), len(ordered) - 1)] * 1000,
        "n": len(ordered),
    }


def backend_of(kind: str, tmp: Path) -> SandboxBackend:
    if kind == "docker":
        return DockerConfig(image=DEFAULT_IMAGE, environments=tmp / "envs").build()
    return BwrapConfig(rootfs=rootfs_path(default_data_dir(), DEFAULT_IMAGE), environments=tmp / "envs").build()


def ready_times(backend: SandboxBackend, tmp: Path, runs: int, image: str | None) -> list[float]:
    times = []
    for index in range(runs):
        workspace = tmp / f"ready-{index}-{time.monotonic_ns()}"
        backend.create_workspace(workspace)  # a task makes it before its clone, not at each start
        started = time.perf_counter()
        box = backend.start(SandboxSpec(task_id="bench-ready", workspace=workspace, image=image))
        box.run("echo ready")
        times.append(time.perf_counter() - started)
        box.close()
        remove_folder(workspace)
    return times


def command_overhead(backend: SandboxBackend, tmp: Path, calls: int) -> dict[str, Any]:
    workspace = tmp / "overhead"
    backend.create_workspace(workspace)
    box = backend.start(SandboxSpec(task_id="bench-overhead", workspace=workspace))
    result: dict[str, Any] = {}
    try:
        for name, run in (
            ("sandbox_plain", lambda: box.run("true")),
            ("sandbox_session", lambda: box.run("true", session=True)),
            ("local_subprocess", lambda: subprocess.run(["bash", "-c", "true"], check=True)),
        ):
            times = []
            for _ in range(calls):
                started = time.perf_counter()
                run()
                times.append(time.perf_counter() - started)
            result[name] = stats(times)
        if isinstance(box, DockerSandbox):
            times = []
            for _ in range(min(calls, 50)):
                started = time.perf_counter()
                box.container.exec_run(["true"])
                times.append(time.perf_counter() - started)
            result["docker_exec"] = stats(times)
    finally:
        box.close()
        remove_folder(workspace)
    local = result["local_subprocess"]["median_ms"]
    for name in ("sandbox_plain", "sandbox_session"):
        result[name]["overhead_ms"] = result[name]["median_ms"] - local
    return result


def wheel_repo(tmp: Path) -> Path:
    if not WHEEL_CACHE.exists() or len(list(WHEEL_CACHE.glob("*.whl"))) < len(WHEELS):
        WHEEL_CACHE.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "-d", str(WHEEL_CACHE), *WHEELS], check=True)  # fmt: skip
    repo = tmp / "wheel-repo"
    (repo / ".overnight").mkdir(parents=True)
    (repo / ".overnight" / "setup.sh").write_text(SETUP)
    shutil.copytree(WHEEL_CACHE, repo / "wheels")
    (repo / "requirements.txt").write_text("\n".join(WHEELS) + "\n")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    return repo


def setup_times(backend: SandboxBackend, tmp: Path, runs: int) -> dict[str, Any]:
    repo = wheel_repo(tmp)
    policy = SetupPolicy(image=DEFAULT_IMAGE, network=False, timeout=600, lifetime=3600)
    results: dict[str, list[float]] = {"cold": [], "cached": []}
    environment = None
    for index in range(runs):
        cache = EnvironmentCache(tmp / f"cache-{index}", backend, max_age=3600, max_bytes=50 * 2**30)
        for phase in ("cold", "cached"):
            workspace = tmp / f"setup-{index}-{phase}"
            started = time.perf_counter()
            backend.create_workspace(workspace)  # timed: a task pays it (the copy stands for the clone, untimed)
            made = time.perf_counter() - started
            shutil.copytree(repo, workspace, dirs_exist_ok=True)
            started = time.perf_counter() - made
            environment = prepare_environment(
                task_id="bench-setup", repository=str(repo), workspace=workspace, setup_path=None, backend=backend,
                cache=cache, policy=policy, emit=lambda event: None,
            ).ref  # fmt: skip
            box = backend.start(SandboxSpec(task_id="bench-setup", workspace=workspace, image=environment))
            enter_environment(box, environment)
            assert box.run("/opt/overnight/venv/bin/python -c 'import attrs, six, idna'").exit_code == 0
            results[phase].append(time.perf_counter() - started)
            box.close()
            remove_folder(workspace)
        for entry in cache.entries():
            backend.remove_environment(entry.ref)
    return {phase: stats(times) for phase, times in results.items()}


def idle_memory(backend: SandboxBackend, tmp: Path, count: int) -> dict[str, Any]:
    boxes = []
    try:
        for index in range(count):
            workspace = tmp / f"idle-{index}"
            backend.create_workspace(workspace)
            boxes.append(backend.start(SandboxSpec(task_id=f"bench-idle-{index}", workspace=workspace)))
        time.sleep(2)
        total = sum(_memory_of(box) for box in boxes)
    finally:
        for box in boxes:
            box.close()
        for index in range(count):
            remove_folder(tmp / f"idle-{index}")
    return {"sandboxes": count, "total_mib": total / 2**20, "per_sandbox_mib": total / count / 2**20}


def _memory_of(box: Any) -> int:
    """Resident memory of the sandbox's processes (cgroup usage minus page cache)."""
    if isinstance(box, DockerSandbox):
        base = Path("/sys/fs/cgroup/memory/docker") / str(box.container.id)
    else:
        base = box.cgroup.dirs[0]  # v1: the memory controller's folder
    stat = dict(line.split() for line in (base / "memory.stat").read_text().splitlines())
    return int(stat["rss"]) + int(stat.get("mapped_file", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", default=["docker", "bwrap"])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--setup-runs", type=int, default=3)
    parser.add_argument("--idle", type=int, default=32)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    report: dict[str, Any] = {}
    for kind in args.backends:
        with tempfile.TemporaryDirectory(prefix=f"bench-{kind}-") as name:
            tmp = Path(name)
            backend = backend_of(kind, tmp)
            cache = EnvironmentCache(tmp / "ready-cache", backend, max_age=3600, max_bytes=50 * 2**30)
            repo = tmp / "r"
            backend.create_workspace(repo)
            shutil.copytree(wheel_repo(tmp / "template"), repo, dirs_exist_ok=True)
            environment = prepare_environment(
                task_id="bench", repository="bench", workspace=repo, setup_path=None, backend=backend, cache=cache,
                policy=SetupPolicy(image=DEFAULT_IMAGE, network=False, timeout=600, lifetime=3600),
                emit=lambda event: None,
            ).ref  # fmt: skip
            report[kind] = {
                "ready_base": stats(ready_times(backend, tmp, args.runs, None)),
                "ready_cached_environment": stats(ready_times(backend, tmp, args.runs, environment)),
                "per_command": command_overhead(backend, tmp, args.calls),
                "setup": setup_times(backend, tmp, args.setup_runs),
                "idle_memory": idle_memory(backend, tmp, args.idle),
            }
            for entry in cache.entries():
                backend.remove_environment(entry.ref)
            remove_folder(repo)
        _print(kind, report[kind])
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


def _print(kind: str, r: dict[str, Any]) -> None:
    per = r["per_command"]
    print(f"== {kind}")
    for label, key in (
        ("ready from the base image", "ready_base"),
        ("ready from a cached env", "ready_cached_environment"),
    ):
        print(f"{label:34} median {r[key]['median_ms']:7.1f} ms   p95 {r[key]['p95_ms']:7.1f} ms")
    for label, key in (("command, plain", "sandbox_plain"), ("command, session", "sandbox_session"),
                       ("local subprocess", "local_subprocess"), ("docker exec", "docker_exec")):  # fmt: skip
        if key in per:
            extra = f"   overhead {per[key]['overhead_ms']:.2f} ms" if "overhead_ms" in per[key] else ""
            print(f"{label:34} median {per[key]['median_ms']:7.2f} ms   p95 {per[key]['p95_ms']:7.2f} ms{extra}")
    setup = r["setup"]
    ratio = setup["cold"]["median_ms"] / setup["cached"]["median_ms"]
    print(f"{'set-up cold → agent ready':34} median {setup['cold']['median_ms']:7.0f} ms")
    print(f"{'set-up cached → agent ready':34} median {setup['cached']['median_ms']:7.0f} ms   ({ratio:.1f}x faster)")
    memory = r["idle_memory"]
    label = f"{memory['sandboxes']} idle sandboxes"
    print(f"{label:34} {memory['total_mib']:7.1f} MiB ({memory['per_sandbox_mib']:.1f} MiB each)")


if __name__ == "__main__":
    main()

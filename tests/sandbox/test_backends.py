"""What each backend promises of its own: Docker's container settings, bubblewrap's cgroup limits, network
for a set-up phase that asks for it, and the reaper removing what a killed worker left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import docker
import pytest

from sandbox.base import SandboxBackend, SandboxSpec
from sandbox.bwrap import BwrapBackend, BwrapSandbox
from sandbox.cgroups import CGROUP_ROOT, PARENT
from sandbox.docker import DockerBackend, DockerSandbox
from sandbox.reaper import orphaned, process_identity, reap
from tests.conftest import SANDBOX_IMAGE


def test_docker_container_is_locked_down(docker_backend: DockerBackend, new_workspace: Callable[..., Path]) -> None:
    workspace = new_workspace(docker_backend)
    box = docker_backend.start(SandboxSpec(task_id="locked", workspace=workspace, lifetime=600))
    try:
        assert isinstance(box, DockerSandbox)
        box.container.reload()
        host = box.container.attrs["HostConfig"]
        assert host["NetworkMode"] == "none" and host["ReadonlyRootfs"] is True
        assert host["Memory"] == 512 * 2**20 and host["MemorySwap"] == host["Memory"]
        assert host["PidsLimit"] == 256 and host["NanoCpus"] == 10**9
        assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges"]
        assert host["Privileged"] is False and not host["Init"]  # the exec server reaps as pid 1, not as root
        assert sorted(host["CapAdd"]) == ["KILL", "SETGID", "SETUID"]  # the server's, never the commands'
        assert box.container.attrs["Config"]["User"] == "0:0" and "setpriv --reuid 999" in " ".join(
            box.container.attrs["Config"]["Cmd"]
        )
        assert set(host["Tmpfs"]) == {"/tmp", "/home/sandbox"} and "size=64m" in host["Tmpfs"]["/tmp"]
        mounts = {m["Destination"]: m["Source"] for m in box.container.attrs["Mounts"]}
        assert set(mounts) == {"/workspace", "/overnight"} and mounts["/workspace"] == str(workspace)
        assert not any("docker.sock" in source for source in mounts.values())
        labels = box.container.labels
        assert labels["dev.overnight.task"] == "locked" and labels["dev.overnight.worker-pid"] == process_identity()
        assert float(labels["dev.overnight.expires"]) > time.time() + 500
        assert box.run("test -S /var/run/docker.sock").exit_code != 0
        assert box.run("grep -c Seccomp:.*2 /proc/self/status").stdout.strip() == "1"  # the default profile
    finally:
        box.close()


def test_bwrap_sandbox_runs_in_its_own_cgroup(bwrap_backend: BwrapBackend, new_workspace: Callable[..., Path]) -> None:
    box = bwrap_backend.start(SandboxSpec(task_id="cgroup", workspace=new_workspace(bwrap_backend)))
    try:
        assert isinstance(box, BwrapSandbox)
        groups = [d for d in (CGROUP_ROOT / "pids" / PARENT).iterdir() if d.name.startswith("cgroup-")]
        assert len(groups) == 1
        assert (groups[0] / "pids.max").read_text().strip() == "256"
        memory = CGROUP_ROOT / "memory" / PARENT / groups[0].name / "memory.limit_in_bytes"
        assert int(memory.read_text()) == 512 * 2**20
        status = box.run("grep -E 'CapEff|NoNewPrivs' /proc/self/status").stdout.split()
        assert status == ["CapEff:", "0000000000000000", "NoNewPrivs:", "1"]
    finally:
        box.close()
    assert not [d for d in (CGROUP_ROOT / "pids" / PARENT).iterdir() if d.name.startswith("cgroup-")]


def _interfaces(box: object) -> set[str]:
    text = box.run("cat /proc/net/dev").stdout  # type: ignore[attr-defined]
    return {line.split(":")[0].strip() for line in text.splitlines()[2:]}


def test_only_a_setup_sandbox_that_asks_gets_a_network(
    backend: SandboxBackend, new_workspace: Callable[..., Path]
) -> None:
    workspace = new_workspace(backend)
    agent = backend.start(SandboxSpec(task_id="net-agent", workspace=workspace))
    setup = backend.start(SandboxSpec(task_id="net-setup", workspace=workspace, network=True, purpose="setup"))
    try:
        assert _interfaces(agent) == {"lo"}
        assert _interfaces(setup) - {"lo"}
    finally:
        agent.close()
        setup.close()


WORKER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from sandbox.base import SandboxSpec
    from tests.conftest import TEST_LIMITS
    kind, workspace, rootfs = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    if kind == "docker":
        from sandbox.docker import DockerConfig
        backend = DockerConfig(image=sys.argv[4], environments=workspace.parent / "envs",
                               control_root=workspace.parent / "control", **TEST_LIMITS).build()
    else:
        from sandbox.bwrap import BwrapConfig
        backend = BwrapConfig(rootfs=rootfs, environments=workspace.parent / "envs",
                              control_root=workspace.parent / "control", **TEST_LIMITS).build()
    box = backend.start(SandboxSpec(task_id="orphan-" + kind, workspace=workspace, purpose=sys.argv[5]))
    print(json.dumps({"socket": str(box.socket_path)}), flush=True)
    box.run("sleep 1000", timeout=1000)
    """
)


@pytest.mark.parametrize("purpose", ["agent", "setup"])
@pytest.mark.parametrize("kind", ["docker", "bwrap"])
def test_a_killed_worker_leaves_nothing_after_the_reaper(
    kind: str,
    purpose: str,
    tmp_path: Path,
    docker_client: docker.DockerClient,
    sandbox_rootfs: Path,
    new_workspace: Callable[..., Path],
    request: pytest.FixtureRequest,
) -> None:
    workspace = new_workspace(request.getfixturevalue(f"{kind}_backend"))
    folders = (tmp_path / "control", tmp_path / "envs")
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, kind, str(workspace), str(sandbox_rootfs), SANDBOX_IMAGE, purpose],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert worker.stdout is not None
    control = Path(json.loads(worker.stdout.readline())["socket"]).parent
    assert control.parent == folders[0] and control.is_dir()
    staging = list(folders[1].glob("staging-*")) if folders[1].exists() else []
    assert len(staging) == (2 if purpose == "setup" else 0)  # the folder (with its disk) and its .owner
    time.sleep(1)  # mid-command
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait()
    deadline = time.monotonic() + 10
    label = f"dev.overnight.task=orphan-{kind}"
    while time.monotonic() < deadline:  # the reaper runs at worker start and periodically
        reap(docker_client, folders)
        containers = docker_client.containers.list(all=True, filters={"label": label})
        survivors = subprocess.run(["pgrep", "-f", str(control)], capture_output=True, text=True).stdout.split()
        groups = [d for d in (CGROUP_ROOT / "pids" / PARENT).iterdir() if d.name.startswith("orphan-")]
        if not containers and not survivors and not groups:
            break
        time.sleep(0.2)
    assert containers == [] and survivors == [] and groups == []
    assert [p.name for folder in folders if folder.exists() for p in folder.iterdir()] == []  # nothing on disk


def test_orphan_rules() -> None:
    me = process_identity()
    mine = {"dev.overnight.worker": os.uname().nodename, "dev.overnight.worker-pid": me, "dev.overnight.expires": "0"}
    assert orphaned(mine) is None
    assert orphaned({**mine, "dev.overnight.worker-pid": f"{os.getpid()}:1"}) == (
        f"its worker process {os.getpid()} is gone"
    )
    assert orphaned({**mine, "dev.overnight.expires": str(time.time() - 3600)}) == "outlived its lifetime"
    elsewhere = {**mine, "dev.overnight.worker": "another-host", "dev.overnight.worker-pid": "1:1"}
    assert orphaned(elsewhere) is None


def test_the_reaper_leaves_a_living_worker_s_empty_cgroup_and_removes_a_dead_one_s() -> None:
    """Two workers on one host: one's reaper must not remove the group the other has just made for a sandbox
    and not yet joined (the sandbox then failed to start: "No such file or directory")."""
    from sandbox.cgroups import CGroup, owned_name

    fresh = CGroup(owned_name("reaper-test-live", process_identity()), memory="64m", pids=32, cpus=0.5)
    dead = subprocess.run([sys.executable, "-c", "from sandbox.reaper import process_identity as p; print(p())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    orphan = CGroup(owned_name("reaper-test-dead", dead), memory="64m", pids=32, cpus=0.5)
    try:
        reap(None)
        assert all(directory.is_dir() for directory in fresh.dirs), "a living worker's group was reaped"
        assert not any(directory.exists() for directory in orphan.dirs), "a dead worker's group stayed"
    finally:
        fresh.remove()
        orphan.remove()

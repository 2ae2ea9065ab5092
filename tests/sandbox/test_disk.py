"""Kernel-enforced disk limits on both backends: a write past the limit fails at once however it is made,
the host gains at most the limit, every other writable place is a small tmpfs (or nothing), and a set-up
cannot put more than the limit into the environment it leaves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import pytest

from sandbox.base import Sandbox, SandboxBackend, SandboxDiskFullError, SandboxSpec, SandboxUnavailableError
from sandbox.cgroups import _bytes
from sandbox.disk import disk_image, mounts_under, remove_folder
from sandbox.docker import DockerSandbox
from sandbox.reaper import remove_owned

LIMIT = 50 * 2**20
# Every directory the commands' uid may write, with the size of the filesystem it is on (0: not a size).
WRITABLE = r"""
import json, os
found = {}
for root, dirs, _ in os.walk("/"):
    if root in ("/proc", "/sys"):
        dirs[:] = []
        continue
    if os.access(root, os.W_OK):
        info = os.statvfs(root)
        found[root] = info.f_blocks * info.f_frsize
print(json.dumps(found))
"""


@pytest.fixture
def small(backend: SandboxBackend) -> SandboxBackend:
    """The same backend with a 50 MiB disk limit."""
    config = backend.config.model_copy(update={"disk_limit": LIMIT})  # type: ignore[attr-defined]
    return config.build()  # type: ignore[no-any-return]


@pytest.fixture
def box(small: SandboxBackend, new_workspace: Callable[..., Path]) -> Iterator[Sandbox]:
    sandbox = small.start(SandboxSpec(task_id="disk", workspace=new_workspace(small)))
    try:
        yield sandbox
    finally:
        sandbox.close()


def host_bytes(workspace: Path) -> int:
    """What the workspace's disk takes of the host's own: the blocks of the file it lives in."""
    os.sync()
    return disk_image(workspace).stat().st_blocks * 512


def test_fallocate_past_the_limit_fails_and_the_host_gains_at_most_the_limit(box: Sandbox, tmp_path: Path) -> None:
    one = box.run("fallocate -l 1G /workspace/big; echo $?")
    assert one.stdout.strip() != "0"  # refused outright (the file-size limit, then the disk)
    with pytest.raises(SandboxDiskFullError, match="disk limit"):  # two files within the file-size limit
        box.run("fallocate -l 30M /workspace/a && fallocate -l 30M /workspace/b")
    assert (tmp_path / "ws" / "a").stat().st_size == 30 * 2**20
    assert (tmp_path / "ws" / "b").stat().st_blocks * 512 < 30 * 2**20  # what was left, not what was asked
    assert host_bytes(tmp_path / "ws") <= LIMIT
    with pytest.raises(SandboxDiskFullError):  # the sandbox refuses more work
        box.run("true")


def test_dd_and_a_million_files_stop_at_the_limit(small: SandboxBackend, new_workspace: Callable[..., Path]) -> None:
    for name, fill in (
        ("dd", "dd if=/dev/zero of=/workspace/fill bs=1M count=100000 status=none"),
        ("files", "mkdir /workspace/many && cd /workspace/many && for i in $(seq 1000000); do : > $i || break; done"),
    ):
        workspace = new_workspace(small, name)
        sandbox = small.start(SandboxSpec(task_id=f"disk-{name}", workspace=workspace))
        try:
            with pytest.raises(SandboxDiskFullError, match="disk limit"):
                sandbox.run(fill, timeout=300)
        finally:
            sandbox.close()
        written = sum(path.lstat().st_blocks * 512 for path in workspace.rglob("*"))
        assert written <= LIMIT and host_bytes(workspace) <= LIMIT, name
    assert len(list((workspace / "many").iterdir())) < 100_000  # inodes run out with the disk


@pytest.mark.parametrize("purpose", ["agent", "setup"])
def test_every_writable_place_is_bounded(
    small: SandboxBackend, new_workspace: Callable[..., Path], purpose: Literal["agent", "setup"]
) -> None:
    workspace = new_workspace(small)
    sandbox = small.start(SandboxSpec(task_id="writable", workspace=workspace, purpose=purpose))
    try:
        result = sandbox.run(f"python3 -c '{WRITABLE}'", timeout=120)
        unwritable = sandbox.run(
            "for d in / /var/tmp /run/lock /var/lock /etc /usr /overnight; do test -w $d && echo $d; done"
        )
    finally:
        sandbox.close()
    writable: dict[str, int] = json.loads(result.stdout)
    config = small.config  # type: ignore[attr-defined]
    bound = max(LIMIT, _bytes(config.tmp_size), _bytes(config.home_size), _bytes(getattr(config, "shm_size", "0")))
    assert {"/workspace", "/tmp", "/home/sandbox"} <= set(writable)
    assert ("/opt/overnight" in writable) == (purpose == "setup")
    assert unwritable.stdout == ""  # /var/tmp and /run/lock included: nothing there is kept or counted
    assert {path: size for path, size in writable.items() if size > bound} == {}


def test_a_set_up_cannot_put_more_than_the_limit_into_its_environment(
    small: SandboxBackend, new_workspace: Callable[..., Path]
) -> None:
    workspace = new_workspace(small)
    setup = small.start(SandboxSpec(task_id="disk-setup", workspace=workspace, purpose="setup"))
    try:
        assert setup.run("head -c 20M /dev/zero > /opt/overnight/kept").exit_code == 0
        with pytest.raises(SandboxDiskFullError, match="disk limit"):
            setup.run("dd if=/dev/zero of=/opt/overnight/more bs=1M count=100000 status=none", timeout=300)
        if isinstance(setup, DockerSandbox):  # nothing in the container's own layer, which nothing limits
            changes = [change["Path"] for change in setup.container.diff() or []]
            assert set(changes) <= {"/home", "/home/sandbox", "/tmp", "/workspace", "/overnight", "/opt"}, changes
        ref, size = small.snapshot(setup, "disk-bounded")
    finally:
        setup.close()
    try:
        assert 20 * 2**20 <= size <= LIMIT
        agent = small.start(SandboxSpec(task_id="disk-agent", workspace=workspace, image=ref))
        try:
            used = int(agent.run("du -sk /opt/overnight | cut -f1").stdout) * 1024
            assert 20 * 2**20 <= used <= LIMIT
            assert agent.run("test -w /opt/overnight").exit_code != 0
        finally:
            agent.close()
    finally:
        small.remove_environment(ref)
    assert not Path(ref).exists()


def test_a_workspace_that_is_not_a_disk_of_its_own_is_refused(backend: SandboxBackend, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(SandboxUnavailableError, match="not a disk of its own"):
        backend.start(SandboxSpec(task_id="plain", workspace=plain)).close()


def test_removing_a_workspace_unmounts_and_deletes_its_disk(backend: SandboxBackend, tmp_path: Path) -> None:
    workspace = tmp_path / "gone"
    backend.create_workspace(workspace)
    (workspace / "file").write_bytes(b"x" * 4096)
    assert mounts_under(workspace) == [workspace] and disk_image(workspace).exists()
    remove_owned(workspace)
    assert mounts_under(workspace) == [] and not disk_image(workspace).exists() and not workspace.exists()


def test_poll_enforcement_still_catches_a_filler(backend: SandboxBackend, tmp_path: Path) -> None:
    """Where kernel limits cannot be had (OVERNIGHT_SANDBOX_DISK_ENFORCEMENT=poll): a plain folder, measured."""
    config = backend.config.model_copy(update={"disk_limit": LIMIT, "disk_enforcement": "poll"})  # type: ignore[attr-defined]
    polled: SandboxBackend = config.build()
    workspace = tmp_path / "polled"
    polled.create_workspace(workspace)
    assert mounts_under(workspace) == []
    sandbox = polled.start(SandboxSpec(task_id="poll", workspace=workspace))
    try:
        with pytest.raises(SandboxDiskFullError, match="disk limit"):
            sandbox.run(
                "for f in a b; do dd if=/dev/zero of=$f bs=1M count=40 status=none; done; sleep 30", timeout=120
            )
    finally:
        sandbox.close()
        remove_folder(workspace)


def test_a_worker_that_cannot_make_disks_refuses_to_start_and_says_why(tmp_path: Path) -> None:
    """As in a container without CAP_SYS_ADMIN: root, but no mount."""
    code = (
        "import sys\n"
        "from overnight.settings import Settings\n"
        "from sandbox.base import SandboxUnavailableError\n"
        "from worker.sandboxes import check_disk_enforcement\n"
        "try:\n"
        "    check_disk_enforcement(Settings(data_dir=sys.argv[1]))\n"
        "except SandboxUnavailableError as exc:\n"
        "    print(exc)\n"
    )
    no_mount = ["setpriv", "--bounding-set", "-sys_admin", "--inh-caps", "-sys_admin"]
    result = subprocess.run([*no_mount, sys.executable, "-c", code, str(tmp_path / "data")], capture_output=True,
                            text=True, timeout=60, cwd=Path(__file__).parents[2])  # fmt: skip
    assert result.stdout.startswith("kernel-enforced disk limits are not possible here: mount failed"), (
        result.stdout + result.stderr
    )
    assert "OVERNIGHT_SANDBOX_DISK_ENFORCEMENT=poll" in result.stdout
    assert mounts_under(tmp_path) == [] and list((tmp_path / "data" / "workspaces").iterdir()) == []

"""Starting bubblewrap as an unprivileged user under a root worker.

bubblewrap run by root maps the sandbox's user to host root: ``/proc/sys`` is then writable from a task and a
setuid file in the workspace is setuid-root on the host. So the worker starts it as ``SERVER_UID`` instead,
and writes the user namespace's map itself (``--userns-block-fd``): two uids, the exec server's and the
commands', each the same inside and outside, neither of them root.

An unprivileged bubblewrap cannot reach the folders it binds when they lie under a root-only path (the data
dir under ``/root``), so the child first enters a mount namespace of its own, as root, and binds each of
them onto a small tmpfs at ``STAGE`` (visible in that namespace only); bubblewrap then binds from there.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from sandbox.base import SandboxSpec, SandboxUnavailableError

log = logging.getLogger(__name__)
STAGE = Path("/run/overnight-sandbox")
HOST_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
CLONE_NEWNS = 0x00020000
MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    encode = lambda text: text.encode() if text is not None else None  # noqa: E731
    if _libc.mount(encode(source), encode(target), encode(fstype), flags, encode(data)) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"mount {source} on {target}: {os.strerror(error)}")


class Stage:
    """Where bubblewrap finds what it binds, from inside the child's own mount namespace."""

    def __init__(self, rootfs: Path, spec: SandboxSpec, control: Path) -> None:
        self.sources: dict[str, Path] = {"root": rootfs, "workspace": spec.workspace, "control": control}
        if spec.image:
            self.sources["environment"] = Path(spec.image) / "opt"
        if spec.ca_bundle is not None:
            self.sources["ca.pem"] = spec.ca_bundle.resolve()
        if spec.egress is not None:
            self.sources["egress"] = spec.egress
        self.rootfs = STAGE / "root"
        self.workspace = STAGE / "workspace"
        self.control = STAGE / "control"
        self.environment = STAGE / "environment" if "environment" in self.sources else None
        self.ca_bundle = STAGE / "ca.pem" if "ca.pem" in self.sources else None
        self.egress = STAGE / "egress" if "egress" in self.sources else None
        for name, source in self.sources.items():
            if not source.exists():
                raise SandboxUnavailableError(f"cannot start the sandbox: its {name} {source} does not exist")
        _ensure_stage()

    def enter(self, uid: int) -> None:
        """In the child, as root: a private mount namespace with the binds, then become ``uid`` for good."""
        if _libc.unshare(CLONE_NEWNS) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
        _mount("overnight", str(STAGE), "tmpfs", 0, "mode=0755,size=64k")
        for name, source in self.sources.items():
            target = STAGE / name
            if source.is_dir():
                target.mkdir()
            else:
                target.touch()
            _mount(str(source), str(target), None, MS_BIND | MS_REC)
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)

    def start(
        self, argv: list[str], enter: Callable[[], None], *, uid_map: Sequence[tuple[int, int]]
    ) -> subprocess.Popen[bytes]:
        """Start bubblewrap and, while it waits, write its user namespace's map (inside uid → host uid).

        A child whose preparation failed (``enter``) is tried once more: the reason is logged, and given in
        the error if the second try fails too."""
        try:
            return self._start(argv, enter, uid_map)
        except EnterError as exc:
            log.warning("preparing bubblewrap failed (%s); trying once more", exc)
            return self._start(argv, enter, uid_map)

    def _start(
        self, argv: list[str], enter: Callable[[], None], uid_map: Sequence[tuple[int, int]]
    ) -> subprocess.Popen[bytes]:
        info_read, info_write = os.pipe()
        block_read, block_write = os.pipe()
        error_read, error_write = os.pipe()
        argv = [argv[0], "--info-fd", str(info_write), "--userns-block-fd", str(block_read), *argv[1:]]

        def guarded() -> None:  # in the child: say what failed, which subprocess alone would not
            try:
                enter()
            except BaseException as exc:
                os.write(error_write, repr(exc).encode()[:1000])
                raise

        try:
            process = subprocess.Popen(
                argv,
                preexec_fn=guarded,
                start_new_session=True,
                env=HOST_ENV,  # bubblewrap itself sees none of the worker's variables either
                pass_fds=(info_write, block_read),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        except subprocess.SubprocessError as exc:  # what went wrong in enter() itself
            os.close(info_read)
            os.close(block_write)
            os.close(error_write)
            reason = os.read(error_read, 1000).decode(errors="replace") or str(exc)
            raise EnterError(f"could not prepare bubblewrap's mounts: {reason}") from exc
        except OSError:  # bubblewrap itself could not be executed
            os.close(info_read)
            os.close(block_write)
            os.close(error_write)
            raise
        else:
            os.close(error_write)
        finally:
            os.close(info_write)
            os.close(block_read)
            os.close(error_read)
        try:
            with os.fdopen(info_read, "rb") as info:
                child = json.loads(_first_json(info))["child-pid"]
            text = "".join(f"{inside} {outside} 1\n" for inside, outside in uid_map)
            for name in ("uid_map", "gid_map"):
                Path(f"/proc/{child}/{name}").write_text(text)
            os.write(block_write, b"1")
        except (OSError, ValueError, KeyError) as exc:
            with contextlib.suppress(OSError):
                process.kill()
            process.wait()
            error = process.stderr.read().decode(errors="replace").strip() if process.stderr else ""
            raise OSError(f"bubblewrap's user namespace could not be set up: {error or exc}") from exc
        finally:
            os.close(block_write)
        return process


class EnterError(OSError):
    """The child could not be prepared for bubblewrap (its mount namespace, binds or uid)."""


def _first_json(stream: object) -> bytes:
    """bubblewrap writes one JSON object on the info fd and keeps it open: read up to its closing brace."""
    data = b""
    while not data.rstrip().endswith(b"}"):
        chunk = os.read(stream.fileno(), 4096)  # type: ignore[attr-defined]
        if not chunk:
            break
        data += chunk
    return data


def _ensure_stage() -> None:
    if os.geteuid() != 0:
        raise SandboxUnavailableError(
            "the bubblewrap backend needs a root worker: it runs the sandbox as two unprivileged uids of its own"
        )
    with contextlib.suppress(FileExistsError):
        STAGE.mkdir(mode=0o755)
    info = STAGE.lstat()
    if not STAGE.is_dir() or STAGE.is_symlink() or info.st_uid != 0:
        raise SandboxUnavailableError(f"{STAGE} must be a folder owned by root")

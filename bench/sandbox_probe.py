"""One tree's sandbox figures (run by ``bench.sandbox_compare``, with that tree first on the path): the median
start (request → first command's output) and the median ``true`` call, plain and session.

    python -c "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')" \
        bench/sandbox_probe.py KIND RUNS CALLS
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from overnight.settings import default_data_dir
from sandbox.base import SandboxSpec
from sandbox.bwrap import BwrapConfig
from sandbox.docker import DockerConfig
from sandbox.image import DEFAULT_IMAGE, rootfs_path


def main(kind: str, runs: int, calls: int) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="overnight-probe-"))
    backend: Any = (
        DockerConfig(image=DEFAULT_IMAGE).build()
        if kind == "docker"
        else BwrapConfig(rootfs=rootfs_path(default_data_dir(), DEFAULT_IMAGE), environments=tmp / "envs").build()
    )
    made: list[Path] = []

    def workspace(name: str) -> Path:
        path = tmp / name
        if hasattr(backend, "create_workspace"):  # trees with kernel disk limits make their own
            backend.create_workspace(path)
            made.append(path)
        else:
            path.mkdir()
        return path

    try:
        ready = []
        for index in range(runs):
            folder = workspace(f"ready-{index}")  # made with the task, before its sandbox starts: not timed
            started = time.perf_counter()
            box = backend.start(SandboxSpec(task_id="probe", workspace=folder))
            box.run("echo ready")
            ready.append(time.perf_counter() - started)
            box.close()
        figures = {"ready": statistics.median(ready) * 1000}
        box = backend.start(SandboxSpec(task_id="probe", workspace=workspace("calls")))
        for name, session in (("plain", False), ("session", True)):
            times = []
            for _ in range(calls):
                started = time.perf_counter()
                box.run("true", session=session)
                times.append(time.perf_counter() - started)
            figures[name] = statistics.median(times) * 1000
        box.close()
        return figures
    finally:
        if made:
            from sandbox.disk import remove_folder

            for path in made:
                remove_folder(path)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    arguments = sys.argv[-3:]  # after -c, argv[0] is "-c" and argv[1] this file
    print(json.dumps(main(arguments[0], int(arguments[1]), int(arguments[2]))))

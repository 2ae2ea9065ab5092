"""``overnight-spawn`` (``spawn.c``): the tiny static program the exec server starts every command through.

Compiled once per worker process with the host's C compiler (no libc, so the result runs in any sandbox
image) into a private folder, then copied into each sandbox's control folder. Without a compiler the exec
server falls back to ``/usr/bin/setpriv``, which does the same in about a millisecond more per command.
"""

from __future__ import annotations

import functools
import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)
SOURCE = Path(__file__).with_name("spawn.c")
FLAGS = ("-O2", "-static", "-nostdlib", "-ffreestanding", "-fno-builtin", "-fno-stack-protector", "-fno-pie", "-no-pie")


@functools.cache
def spawn_helper() -> Path | None:
    """The compiled helper, or None (with one warning) when this host cannot compile it."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.warning("no C compiler on this worker: sandbox commands start through setpriv (about 1 ms slower)")
        return None
    output = Path(tempfile.mkdtemp(prefix="overnight-spawn-")) / "overnight-spawn"
    result = subprocess.run([compiler, *FLAGS, "-o", str(output), str(SOURCE)], capture_output=True, text=True)
    if result.returncode != 0:
        log.warning("could not compile %s (%s): sandbox commands start through setpriv", SOURCE,
                    result.stderr.strip()[-300:])  # fmt: skip
        return None
    return output

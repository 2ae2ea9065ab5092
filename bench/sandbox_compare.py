"""The sandbox's start and per-command figures of this tree against another revision's, side by side.

Rounds alternate between the two trees (a worktree of REV in a temporary folder, and this checkout), each
in a process of its own importing its tree's ``sandbox`` package, so both see the same machine in the same
minutes; medians over the rounds. Used for the boundary work of issue 21 (docs/sandbox.md, "Benchmark").

    python -m bench.sandbox_compare --against 51fc932 [--rounds 5] [--runs 6] [--calls 150]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).with_name("sandbox_probe.py")


def probe(tree: Path, kind: str, runs: int, calls: int) -> dict[str, float]:
    result = subprocess.run(
        # -c, not the script's path: bench/ first on sys.path would make bench/sandbox.py the `sandbox` package.
        [sys.executable, "-c", "import runpy, sys; runpy.run_path(sys.argv[1], run_name='__main__')", str(PROBE),
         kind, str(runs), str(calls)],
        cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"{tree} {kind}: {result.stderr.strip()[-500:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", required=True, help="the git revision to compare with")
    parser.add_argument("--backends", nargs="+", default=["docker", "bwrap"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=6, help="sandbox starts per round")
    parser.add_argument("--calls", type=int, default=150, help="`true` calls per round")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="overnight-compare-") as folder:
        other = Path(folder) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(other), args.against], cwd=HERE, check=True)
        try:
            figures: dict[tuple[str, str], list[dict[str, float]]] = {}
            for _ in range(args.rounds):
                for kind in args.backends:
                    for name, tree in ((args.against, other), ("this tree", HERE)):
                        figures.setdefault((kind, name), []).append(probe(tree, kind, args.runs, args.calls))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=HERE, check=False)
    print(f"{'':24}{'ready ms':>10}{'true ms':>10}{'session ms':>12}")
    for (kind, name), rows in figures.items():
        medians = [statistics.median(row[key] for row in rows) for key in ("ready", "plain", "session")]
        print(f"{kind + ', ' + name:24}{medians[0]:>10.1f}{medians[1]:>10.2f}{medians[2]:>12.2f}")


if __name__ == "__main__":
    main()

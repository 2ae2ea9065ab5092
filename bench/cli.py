"""CLI start-up time: the client must start in well under half a second.

python -m bench.cli [--runs 20]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

COMMANDS = (["overnight", "--help"], ["overnight", "show", "--help"], ["overnight", "diff"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    for command in COMMANDS:
        times = []
        for _ in range(args.runs):
            started = time.perf_counter()
            subprocess.run(command, capture_output=True)
            times.append(time.perf_counter() - started)
        ordered = sorted(times)
        p95 = ordered[min(round(0.95 * (len(ordered) - 1)), len(ordered) - 1)]
        print(f"{' '.join(command):28} median {statistics.median(times) * 1000:6.0f} ms   p95 {p95 * 1000:6.0f} ms")


if __name__ == "__main__":
    main()

"""Best-of-N benchmark: wall time of a task run as 4 attempts against the same task run once, on ONE worker
process with Celery concurrency 4, through the real stack: the API under uvicorn, ``python -m worker 4``, this
machine's Redis (a queue of its own), a SQLite database file, Docker sandboxes, and the scripted model answering
each turn after a fixed delay (``--turn-seconds``: a model's time to answer, which attempts spend side by side).

Every run of the agent is the same four turns (read the file, fix it, run the unit test, finish), each attempt
with a script of its own. The time is from ``POST /v1/tasks`` to the task's final state: for N=4 it includes the
four attempts and the ranking (each attempt's patch checked by its test command in a fresh sandbox, then the best
patch copied to the task). One task of each kind runs first to warm the mirror, the set-up snapshot and the
image, and is not counted; then N=1 and N=4 alternate, ``--runs`` times each.

    python -m bench.attempts [--runs 5] [--turn-seconds 2.0] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from agent.scripted import ScriptedCall, ScriptedModel, ScriptedModelServer, ScriptedTurn
from bench.load import free_port, make_users, percentile, server_env, stop_processes

FINAL = {"succeeded", "failed", "cancelled"}
CONCURRENCY = 4


def make_repo(root: Path) -> Path:
    """A calculator whose one unit test fails until add() adds."""
    repo = root / "calc"
    repo.mkdir()
    (repo / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    (repo / "test_calc.py").write_text(
        "import unittest\n\nfrom calc import add\n\n\nclass AddTest(unittest.TestCase):\n"
        "    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n"
    )
    for command in (["init", "-q"], ["add", "."], ["-c", "user.name=b", "-c", "user.email=b@b", "commit", "-qm", "i"]):
        subprocess.run(["git", *command], cwd=repo, check=True)
    return repo


def script(delay: float, index: int) -> list[ScriptedTurn]:
    """One run of the agent: four turns, each answered after ``delay`` seconds (attempt ``index`` writes a
    comment of its own length, so the patches differ in size)."""

    def turn(name: str, **arguments: Any) -> ScriptedTurn:
        return ScriptedTurn(tool_calls=[ScriptedCall(name=name, arguments=arguments)], delay=delay)

    fix = "    return a + b" + ("  # " + "fixed " * index if index else "")
    return [
        turn("read_file", file_path="calc.py"),
        turn("edit", file_path="calc.py", old_string="    return a - b", new_string=fix),
        turn("bash", command="python3 -m unittest 2>&1 | tail -1"),
        turn("finish", summary="add() adds", pr_title="Fix add", pr_body="add() adds."),
    ]


def run_one(client: httpx.Client, model: ScriptedModel, repo: Path, attempts: int, delay: float) -> dict[str, Any]:
    """File one task of ``attempts`` attempts and wait for its end: seconds, state, and when the ranking ran."""
    model.scripts.extend(script(delay, index) for index in range(attempts))
    started = time.monotonic()
    body: dict[str, Any] = {"repo": str(repo), "instruction": "Fix add() in calc.py"}
    if attempts > 1:
        body["attempts"] = attempts
    task = client.post("/v1/tasks", json=body).raise_for_status().json()
    state = task["state"]
    while state not in FINAL:
        time.sleep(0.1)
        state = client.get(f"/v1/tasks/{task['id']}").raise_for_status().json()["state"]
    seconds = time.monotonic() - started
    result: dict[str, Any] = {"attempts": attempts, "seconds": round(seconds, 2), "state": state, "id": task["id"]}
    if attempts > 1:
        events = client.get(f"/v1/tasks/{task['id']}/events").raise_for_status().json()["events"]
        ended = [event["created_at"] for event in events if event["type"] == "attempt_ended"]
        ranked = [event["created_at"] for event in events if event["type"] == "attempts_ranked"]
        if ended and ranked:  # from the last attempt's end to the ranking stored
            last, done = datetime.fromisoformat(max(ended)), datetime.fromisoformat(ranked[0])
            result["ranking_seconds"] = round((done - last).total_seconds(), 2)
        best = client.get(f"/v1/tasks/{task['id']}/attempts").raise_for_status().json()
        result["best"] = best["best"]
    return result


def summary(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 2), "p95": round(percentile(values, 0.95), 2),
            "min": round(min(values), 2), "max": round(max(values), 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each kind (after one warm-up each)")
    parser.add_argument("--turn-seconds", type=float, default=2.0, help="the scripted model's delay per turn")
    parser.add_argument("--attempts", type=int, default=4)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-attempts-") as name, ScriptedModelServer(ScriptedModel()) as model:
        tmp = Path(name)
        database = f"sqlite:///{tmp / 'overnight.db'}"
        [token] = make_users(database, 1)
        port = free_port()
        env = server_env(tmp, database, model.base_url) | {"OVERNIGHT_MAX_ACTIVE_TASKS_PER_USER": str(CONCURRENCY)}
        api = [sys.executable, "-m", "uvicorn", "--factory", "api.app:create_app", "--port", str(port),
               "--log-level", "warning"]  # fmt: skip
        processes = [
            subprocess.Popen(api, env=env, start_new_session=True),
            subprocess.Popen(
                [sys.executable, "-m", "worker", str(CONCURRENCY)],
                env=env,
                start_new_session=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            ),
        ]
        try:
            result = measure(f"http://127.0.0.1:{port}", token, model.state, make_repo(tmp), args)
        finally:
            stop_processes(processes)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


def measure(base: str, token: str, model: ScriptedModel, repo: Path, args: argparse.Namespace) -> dict[str, Any]:
    client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    for _ in range(300):
        try:
            if httpx.get(f"{base}/healthz").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.2)
    kinds = (1, args.attempts)
    warm = [run_one(client, model, repo, n, args.turn_seconds) for n in kinds]
    runs: list[dict[str, Any]] = []
    for _ in range(args.runs):
        runs += [run_one(client, model, repo, n, args.turn_seconds) for n in kinds]
    states = {run["state"] for run in warm + runs}
    if states != {"succeeded"}:
        raise SystemExit(f"some tasks did not succeed: {[(r['id'], r['state']) for r in warm + runs]}")
    single = [run["seconds"] for run in runs if run["attempts"] == 1]
    multi = [run["seconds"] for run in runs if run["attempts"] == args.attempts]
    ranking = [run["ranking_seconds"] for run in runs if "ranking_seconds" in run]
    running = [run["seconds"] - run["ranking_seconds"] for run in runs if "ranking_seconds" in run]
    return {
        "turn_seconds": args.turn_seconds,
        "turns_per_run": 4,
        "worker_concurrency": CONCURRENCY,
        "runs": args.runs,
        "N=1_seconds": summary(single),
        f"N={args.attempts}_seconds": summary(multi),
        "ratio_of_medians": round(statistics.median(multi) / statistics.median(single), 2),
        f"N={args.attempts}_until_last_attempt_ended_seconds": summary(running) if running else None,
        f"N={args.attempts}_ranking_seconds": summary(ranking) if ranking else None,
        "warm_up_seconds": [run["seconds"] for run in warm],
        "all": runs,
    }


if __name__ == "__main__":
    main()

"""The eval's loop: every (instance, attempt) not yet graded goes through submit → wait → grade, ``concurrency``
at a time, each recorded as soon as it is submitted (a resumed eval waits for a task it had already filed instead
of filing it again) and again once graded (a resumed eval skips it)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from sqlalchemy.orm import Session, sessionmaker

from overnight.access import Requester
from overnight.admin.eval.grade import Grade, Grader
from overnight.admin.eval.instances import Instance, RepoSource
from overnight.admin.eval.report import Report, RunRecord, load_report, save
from overnight.admin.eval.setups import RepoSetup, apply_setups
from overnight.admin.eval.tasks import Stopped, TaskFigures, eval_user, requester, submit, task_figures, wait_for
from overnight.broker import resolve_broker_url
from overnight.queue import TaskQueue
from overnight.settings import Settings
from worker.task_environment import task_environment


@dataclass(kw_only=True)
class EvalPlan:
    instances: list[Instance]
    instances_file: Path
    output: Path
    source: RepoSource
    concurrency: int = 1
    attempts: int = 1
    max_steps: int | None = None
    model_name: str
    user: str = "eval"
    test_timeout: float = 1800
    setups: list[RepoSetup] = field(default_factory=list)
    """The environments the instances' set-ups need (made or changed before any task is filed)."""


@dataclass(kw_only=True)
class _Eval:
    """What the runs share: the report (under ``lock``), the database, the queue, the grader."""

    plan: EvalPlan
    settings: Settings
    report: Report
    sessions: sessionmaker[Session]
    queue: TaskQueue
    grader: Grader
    user_id: int
    owner: Requester
    console: Console
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    started: float = field(default_factory=time.monotonic)
    elapsed_before: float = 0.0

    def save(self) -> None:
        with self.lock:
            self.report.elapsed_seconds = round(self.elapsed_before + time.monotonic() - self.started, 1)
            save(self.report, self.plan.output, [instance.instance_id for instance in self.plan.instances])

    def run_one(self, instance: Instance, attempt: int) -> RunRecord:
        with self.lock:
            earlier = self.report.run(instance.instance_id, attempt)
        if earlier is None:
            task_id = submit(self.sessions, self.queue, instance, repo=self.plan.source.locate(instance.repo),
                             user_id=self.user_id, allow_local=self.settings.allow_local_repos,
                             max_steps=self.plan.max_steps)  # fmt: skip
            with self.lock:
                self.report.put(RunRecord(instance_id=instance.instance_id, attempt=attempt, task_id=task_id))
            self.save()
        else:
            task_id = earlier.task_id
        wait_for(self.sessions, task_id, self.stop)
        figures = task_figures(self.sessions, task_id, self.settings.agent.budget)
        grade = self._grade(instance, figures)
        record = _record(instance, attempt, figures, grade)
        with self.lock:
            self.report.put(record)
        self.save()
        if grade.log:
            logs = self.plan.output / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            (logs / f"{instance.instance_id}.{attempt}.log").write_text(grade.log)
        return record

    def _grade(self, instance: Instance, figures: TaskFigures) -> Grade:
        if figures.base_sha is None:  # it never reached its checkout: nothing to grade against
            return Grade(outcome="error", reason=f"the task {figures.state} before its checkout")
        with self.sessions() as session:  # the environment the task's set-up had: the same cache key
            task_env = task_environment(session, figures.task_id, owner=self.owner, access=self.grader.checkout.access,
                                        open_box=self.settings.secrets.box)  # fmt: skip
        return self.grader.grade(instance, repo=figures.repo, base_sha=figures.base_sha, setup=figures.setup,
                                 owner=self.owner, user_id=self.user_id, diff=figures.diff,
                                 task_env=task_env)  # fmt: skip


def _record(instance: Instance, attempt: int, figures: TaskFigures, grade: Grade) -> RunRecord:
    reason = grade.reason
    if figures.state != "succeeded" and grade.outcome != "resolved":
        reason = f"task {figures.state}: {figures.reason or 'no reason'}" + (f"; {reason}" if reason else "")
    return RunRecord(
        instance_id=instance.instance_id, attempt=attempt, task_id=figures.task_id, graded=True,
        outcome=grade.outcome, reason=reason, task_state=figures.state, task_reason=figures.reason,
        steps=figures.steps, prompt_tokens=figures.prompt_tokens, cached_tokens=figures.cached_tokens,
        completion_tokens=figures.completion_tokens, cost=figures.cost, wall_seconds=figures.wall_seconds,
        queued_seconds=figures.queued_seconds, setup_seconds=figures.setup_seconds, setup_cached=figures.setup_cached,
        setup_script=figures.setup_script,
        grading_seconds=grade.seconds, patch_complete=figures.patch_complete, fail_to_pass=grade.fail_to_pass,
        pass_to_pass=grade.pass_to_pass, tests=grade.tests, model_patch=figures.diff,
    )  # fmt: skip


def open_eval(plan: EvalPlan, settings: Settings, console: Console) -> _Eval:
    """The report to go on with (or a new one), the database, the broker the API would send to, the grader."""
    from store.engine import make_engine, make_sessionmaker, migrate

    report = load_report(plan.output)
    if report is not None and report.model_name_or_path != plan.model_name:
        console.print(f"[yellow]note:[/yellow] {plan.output} holds a report of {escape(report.model_name_or_path)}; "
                      f"its runs are kept and the new ones are named {escape(plan.model_name)}")  # fmt: skip
    planned = len(plan.instances) * plan.attempts
    if report is None:
        report = Report(model_name_or_path=plan.model_name, instances_file=str(plan.instances_file),
                        attempts=plan.attempts, planned=planned)  # fmt: skip
    report.model_name_or_path, report.attempts, report.planned = plan.model_name, plan.attempts, planned
    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as session:
        user = eval_user(session, plan.user)
        user_id, owner = user.id, requester(user)
        apply_setups(session, plan.setups)
    broker_url, _ = resolve_broker_url(settings)
    return _Eval(plan=plan, settings=settings, report=report, sessions=sessions,
                 queue=TaskQueue(broker_url, queue=settings.queue),
                 grader=Grader.from_settings(settings, test_timeout=plan.test_timeout), user_id=user_id, owner=owner,
                 console=console, elapsed_before=report.elapsed_seconds)  # fmt: skip


def run_eval(plan: EvalPlan, settings: Settings, console: Console) -> Report:
    """Run what is left of the plan; returns the report (saved). Ctrl-C stops waiting: the tasks go on, and
    the next run of the same command picks them up."""
    ev = open_eval(plan, settings, console)
    todo = [(instance, attempt) for attempt in range(1, plan.attempts + 1) for instance in plan.instances
            if not ((run := ev.report.run(instance.instance_id, attempt)) and run.graded)]  # fmt: skip
    done = ev.report.planned - len(todo)
    if done:
        console.print(f"resuming: {done} run(s) already graded in {plan.output}, {len(todo)} to go")
    if settings.worker.max_active_tasks_per_user < plan.concurrency:
        console.print(f"[yellow]note:[/yellow] workers run at most {settings.worker.max_active_tasks_per_user} tasks "
                      "of one user at once (OVERNIGHT_MAX_ACTIVE_TASKS_PER_USER); the rest wait queued")  # fmt: skip
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=console, transient=False) as progress, \
            ThreadPoolExecutor(max_workers=plan.concurrency, thread_name_prefix="eval") as pool:  # fmt: skip
        bar = progress.add_task(_description(ev.report), total=ev.report.planned, completed=done)
        futures: dict[Future[RunRecord], tuple[str, int]] = {
            pool.submit(ev.run_one, instance, attempt): (instance.instance_id, attempt) for instance, attempt in todo
        }
        try:
            _collect(ev, futures, progress, bar)
        except KeyboardInterrupt:
            ev.stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            ev.save()
            raise
    ev.save()
    return ev.report


def _collect(ev: _Eval, futures: dict[Future[RunRecord], tuple[str, int]], progress: Progress, bar: TaskID) -> None:
    for future in as_completed(futures):
        instance_id, attempt = futures[future]
        try:
            future.result()
        except Stopped:
            continue
        except Exception as exc:  # one run's trouble (the database, the sandbox engine) ends only that run
            message = " ".join(str(exc).split())[:300]
            ev.console.print(f"[red]error:[/red] {escape(instance_id)} attempt {attempt}: {type(exc).__name__}: "
                             f"{escape(message)} (not graded; run the command again to retry it)")  # fmt: skip
            continue
        progress.update(bar, advance=1, description=_description(ev.report))


def _description(report: Report) -> str:
    graded = [run for run in report.runs if run.graded]
    return f"eval: {sum(run.resolved for run in graded)} resolved of {len(graded)}"

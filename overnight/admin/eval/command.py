"""The ``overnight eval`` command line: ``overnight eval INSTANCES.jsonl [options]`` runs and grades,
``overnight eval compare A.json B.json`` compares two reports. The entry point hands its arguments here."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from overnight.admin.eval.instances import Instance, RepoSource
    from overnight.admin.eval.setups import RepoSetup

err = Console(stderr=True)
out = Console()
run_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
compare_app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


@run_app.command()
def evaluate(
    instances: Annotated[Path, typer.Argument(help="SWE-bench instances: JSON lines (or a JSON list).")],
    repos: Annotated[
        Path | None, typer.Option(help="A folder of local mirrors (OWNER__NAME, OWNER/NAME or NAME git repositories).")
    ] = None,
    repo_url: Annotated[str, typer.Option(help="Without --repos: the URL of a repository, {repo} = OWNER/NAME.")] = (
        "https://github.com/{repo}.git"
    ),
    specs: Annotated[
        Path | None, typer.Option(help="Set-ups by repository and version (SWE-bench's specs map, as JSON).")
    ] = None,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Folder of the report (default: overnight-eval/STEM).")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Tasks in flight at once.")] = 1,
    attempts: Annotated[int, typer.Option(min=1, help="Independent runs of each instance.")] = 1,
    max_steps: Annotated[int | None, typer.Option(min=1, help="Model calls one task may make.")] = None,
    model_name: Annotated[
        str | None, typer.Option(help="model_name_or_path of the predictions (default: overnight/OVERNIGHT_LLM_MODEL).")
    ] = None,
    only: Annotated[list[str] | None, typer.Option(help="Only this instance (repeat it).")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="Only the first N instances.")] = None,
    test_timeout: Annotated[float, typer.Option(min=1, help="Seconds the tests of one grading may take.")] = 1800,
    user: Annotated[str, typer.Option(help="User the tasks belong to (an admin, made on first use).")] = "eval",
    as_json: Annotated[bool, typer.Option("--json", help="Print the report's summary as JSON.")] = False,
) -> None:
    """Run SWE-bench-format instances as tasks through this server's pipeline and grade each in a sandbox
    (server side: the workers must be running). Resumable: graded runs in the output folder are skipped."""
    from overnight.admin.eval.instances import InstanceError
    from overnight.admin.eval.report import print_report
    from overnight.admin.eval.runner import EvalPlan, run_eval
    from overnight.settings import Settings

    settings = Settings()
    chosen, source, setups = _chosen_instances(instances, repos=repos, repo_url=repo_url, specs=specs, only=only,
                                               limit=limit)  # fmt: skip
    plan = EvalPlan(
        instances=chosen, instances_file=instances.resolve(), source=source, setups=setups,
        output=output or Path("overnight-eval") / instances.stem, concurrency=concurrency, attempts=attempts,
        max_steps=max_steps, model_name=model_name or f"overnight/{settings.llm.model}", user=user,
        test_timeout=test_timeout,
    )  # fmt: skip
    try:
        report = run_eval(plan, settings, err)
    except KeyboardInterrupt:
        err.print(f"interrupted: the report in {escape(str(plan.output))} is saved and the filed tasks go on in the "
                  "workers; the same command resumes (graded runs skipped, filed ones waited for)")  # fmt: skip
        raise typer.Exit(130) from None
    except InstanceError as exc:  # an environment the eval's set-ups need is someone else's
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    if as_json:
        sys.stdout.write((report.summary or report.summarise()).model_dump_json(indent=2) + "\n")
    else:
        print_report(report, out)
        out.print(f"report: {plan.output / 'report.json'}; predictions: {plan.output / 'predictions.jsonl'}")
    summary = report.summary or report.summarise()
    raise typer.Exit(0 if summary.graded == summary.planned else 1)


def _chosen_instances(
    instances: Path, *, repos: Path | None, repo_url: str, specs: Path | None, only: list[str] | None,
    limit: int | None,
) -> tuple[list[Instance], RepoSource, list[RepoSetup]]:  # fmt: skip
    """The instances to run, where their repositories are and the set-ups their environments give them; exits
    with 2 and the reason on bad input."""
    from overnight.admin.eval.instances import InstanceError, RepoSource, load_instances, with_specs
    from overnight.admin.eval.setups import plan_setups
    from overnight.admin.eval.specs import SpecError, load_specs

    try:
        every = with_specs(load_instances(instances), load_specs(specs) if specs else {})
        chosen = every
        if only:
            chosen = [instance for instance in chosen if instance.instance_id in set(only)]
            missing = set(only) - {instance.instance_id for instance in chosen}
            if missing:
                raise InstanceError(f"no instance {', '.join(sorted(missing))} in {instances}")
        source = RepoSource(mirrors=repos.resolve(), url=repo_url) if repos else RepoSource(url=repo_url)
        for instance in chosen[:limit]:
            source.locate(instance.repo)  # every mirror is there before any task is filed
        setups = plan_setups(every, chosen[:limit], source)
    except (InstanceError, SpecError) as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    return chosen[:limit], source, setups


@compare_app.command()
def compare(
    a: Annotated[Path, typer.Argument(help="The first report (report.json, or its folder).")],
    b: Annotated[Path, typer.Argument(help="The second report.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
) -> None:
    """Two reports side by side: resolved % with a 95 % Wilson interval each, and the runs that flipped."""
    from pydantic import ValidationError

    from overnight.admin.eval.compare import compare as compare_reports
    from overnight.admin.eval.compare import print_comparison
    from overnight.admin.eval.report import REPORT, Report

    reports = []
    for path in (a, b):
        file = path / REPORT if path.is_dir() else path
        try:
            reports.append(Report.model_validate_json(file.read_text()))
        except (OSError, ValidationError) as exc:
            err.print(f"[red]error:[/red] {escape(str(file))} is not a report of overnight eval: "
                      f"{escape(' '.join(str(exc).split())[:200])}")  # fmt: skip
            raise typer.Exit(2) from None
    comparison = compare_reports(reports[0], reports[1], names=(str(a), str(b)))
    if as_json:
        sys.stdout.write(comparison.model_dump_json(indent=2) + "\n")
    else:
        print_comparison(comparison, out)


def main(args: list[str]) -> int:
    """``overnight eval ARGS``: ``compare`` first means the comparison; anything else is a run."""
    if args and args[0] == "compare":
        app, prog, rest = compare_app, "overnight eval compare", args[1:]
    else:
        app, prog, rest = run_app, "overnight eval", args
    try:
        typer.main.get_command(app).main(args=rest, prog_name=prog, standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0

"""Instance set-ups without a stack: reading a specs file in SWE-bench's shape, giving instances their spec by
repository and version, the script a spec becomes, and the per-repository script that picks it by commit (the
runs themselves: test_setup.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from overnight.admin.eval.instances import Instance, InstanceError, RepoSource, with_specs
from overnight.admin.eval.setups import MARKER, dispatch_script, plan_setups
from overnight.admin.eval.specs import InstanceSpec, SpecError, load_specs, setup_commands

BASE = {"repo": "a/b", "problem_statement": "it breaks", "FAIL_TO_PASS": "[]", "PASS_TO_PASS": "[]"}


def instance(iid: str, base: str, **fields: Any) -> Instance:
    return Instance.model_validate({**BASE, "instance_id": iid, "base_commit": base, **fields})


def test_a_specs_file_in_swe_benchs_shape_reads_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "specs.json"
    path.write_text(json.dumps({"a/b": {"1.0": {
        "python": "3.9", "packages": "requirements.txt", "install": "pip install -e .", "pre_install": "make gen",
        "test_cmd": ["pytest -rA"], "nano_cpus": 2, "eval_commands": ["export LANG=C"]}}}))  # fmt: skip
    spec = load_specs(path)["a/b"]["1.0"]
    assert spec.pre_install == ["make gen"] and spec.eval_commands == ["export LANG=C"]
    assert spec.test_command() == "pytest -rA {test_files}"
    path.write_text(json.dumps({"a/b": {"1.0": {"pre_install": 3}}}))
    with pytest.raises(SpecError, match=r"a/b 1.0: pre_install"):
        load_specs(path)
    path.write_text("[]")
    with pytest.raises(SpecError, match="expected"):
        load_specs(path)


def test_instances_get_the_spec_of_their_repository_and_version_and_keep_their_own() -> None:
    specs = {"a/b": {"1.0": InstanceSpec(install="pip install -e ."), "2.0": InstanceSpec(install="make")}}
    own = InstanceSpec(install="own")
    given = with_specs([instance("x", "aaaa", version="1.0"), instance("y", "bbbb", version="2.0"),
                        instance("z", "cccc", version="2.0", spec=own.model_dump()),
                        instance("w", "dddd", repo="c/d")], specs)  # fmt: skip
    assert [i.spec.install if i.spec else None for i in given] == ["pip install -e .", "make", "own", None]
    with pytest.raises(InstanceError, match=r"x: the specs have a/b but not its version '3.0' \(they have 1.0, 2.0\)"):
        with_specs([instance("x", "aaaa", version="3.0")], specs)


def test_an_instance_with_a_set_up_names_commits_and_no_set_up_script() -> None:
    with pytest.raises(ValueError, match="base_commit must be a commit id"):
        instance("x", "main", spec={"install": "make"})
    with pytest.raises(ValueError, match="environment_setup_commit must be a commit id"):
        instance("x", "abcd", spec={"install": "make"}, environment_setup_commit="abcd; rm -rf /")
    with pytest.raises(ValueError, match="setup"):
        instance("x", "abcd", spec={"install": "make"}, setup=".overnight/x.sh")
    assert instance("x", "abcd", setup=".overnight/x.sh", environment_setup_commit="main").spec is None


def test_a_spec_becomes_a_dependency_stage_at_the_environment_commit_then_the_install() -> None:
    spec = InstanceSpec(packages="requirements.txt", reqs_path=["req/dev.txt", "requirements.txt"],
                        pip_packages=["'pytest<8'", "six"], pre_install=["sed -i s/a/b/ x"],
                        install="pip install .")  # fmt: skip
    script = setup_commands(spec, environment_commit="feed1234")
    stage = script.index("git worktree add --quiet --detach /tmp/overnight-env-commit feed1234")
    assert (
        stage
        < script.index("for file in req/dev.txt requirements.txt")
        < script.index("pip install --progress-bar off 'pytest<8' six")
    )
    assert script.index("git worktree remove") < script.index("sed -i s/a/b/ x") < script.index("pip install .")
    assert "HEAD" in setup_commands(spec, environment_commit=None)  # no environment commit: the base's files
    conda = setup_commands(InstanceSpec(packages="'numpy==1.19.2' scipy=1.5 pytest"), environment_commit=None)
    assert "pip install --progress-bar off numpy==1.19.2 scipy==1.5 pytest" in conda
    skipped = setup_commands(InstanceSpec(packages="environment.yml"), environment_commit=None)
    assert "needs conda" in skipped and "pip install" not in skipped
    assert "git worktree" not in setup_commands(InstanceSpec(install="make"), environment_commit="feed1234")


def test_the_requirements_stage_leaves_out_the_project_and_reads_the_first_file_there(tmp_path: Path) -> None:
    """The requirements loop of the script, run by bash with ``pip`` a function that prints what it installs."""
    (tmp_path / "req").mkdir()
    (tmp_path / "req" / "dev.txt").write_text("# comment\n-e .\n.[test]\nsix==1.17.0\n-r base.txt\n")
    spec = InstanceSpec(packages="requirements.txt", reqs_path=["missing.txt", "req/dev.txt"])
    loop = setup_commands(spec, environment_commit=None).split("cd /tmp/overnight-env-commit\n")[1]
    loop = loop.split("\ncd /workspace")[0]
    shown = subprocess.run(["bash", "-ec", 'pip() { cat "${@: -1}"; }\n' + loop], cwd=tmp_path, capture_output=True,
                           text=True, check=True).stdout  # fmt: skip
    assert shown == "six==1.17.0\n-r base.txt\n"
    (tmp_path / "req" / "dev.txt").unlink()
    missing = subprocess.run(["bash", "-ec", loop], cwd=tmp_path, capture_output=True, text=True)
    assert missing.returncode == 1 and "no requirements file at the environment commit" in missing.stderr
    odd = InstanceSpec(packages="requirements.txt", reqs_path=["r-$(echo expanded).txt"])
    loop = setup_commands(odd, environment_commit=None).split("cd /tmp/overnight-env-commit\n")[1].split("\ncd /")[0]
    said = subprocess.run(["bash", "-ec", loop], cwd=tmp_path, capture_output=True, text=True).stderr
    assert "(looked for r-$(echo expanded).txt)" in said  # a path is data, never run


def test_one_script_per_repository_picks_the_set_up_by_the_commit_checked_out(tmp_path: Path) -> None:
    old, new = {"install": "echo old"}, {"install": "echo new"}
    instances = [instance("x-1", "aaaa1111", spec=old), instance("x-2", "bbbb2222", spec=old),
                 instance("x-3", "cccc3333", spec=new), instance("y-1", "dddd", repo="c/d")]  # fmt: skip
    script = dispatch_script("a/b", instances)
    assert script is not None and script.startswith(MARKER) and script.count("() {") == 2
    assert "aaaa1111*|bbbb2222*) overnight_eval_setup_1 ;;" in script and "cccc3333*) overnight_eval_setup_2" in script
    assert dispatch_script("c/d", instances) is None
    repo = tmp_path / "r"
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "--allow-empty", "-m", "x"], check=True)  # fmt: skip
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    ran = subprocess.run(["bash", "-c", script.replace("python3 -m venv", ": ").replace(". /opt", ": ")], cwd=repo,
                         capture_output=True, text=True)  # fmt: skip
    assert ran.returncode == 1 and f"no instance of this repository is at commit {head.strip()}" in ran.stderr
    picked = script.replace("aaaa1111*", f"{head[:7]}*").replace("python3 -m venv", ": ").replace(". /opt", ": ")
    assert subprocess.run(["bash", "-c", picked], cwd=repo, capture_output=True, text=True).stdout == "old\n"


def test_a_failing_pre_install_command_is_reported_and_the_install_must_succeed(tmp_path: Path) -> None:
    """SWE-bench's pre_install lines include apt-get, which needs the root the sandbox's user does not have."""
    spec = InstanceSpec(pre_install=["WHERE=built", "false && echo never", "echo pre: $WHERE"], install="echo done")
    script = setup_commands(spec, environment_commit=None).replace("python3 -m venv", ": ").replace(". /opt", ": ")
    ran = subprocess.run(["bash", "-ec", script], cwd=tmp_path, capture_output=True, text=True)
    assert ran.returncode == 0 and ran.stdout == "pre: built\ndone\n", ran
    assert "a pre_install command failed (exit 1); going on" in ran.stderr
    failing = setup_commands(InstanceSpec(install="exit 7"), environment_commit=None).replace("python3 -m", ": ")
    assert subprocess.run(["bash", "-ec", failing.replace(". /opt", ": ")], cwd=tmp_path).returncode == 7


def test_a_repository_whose_instances_do_not_agree_on_a_set_up_is_refused() -> None:
    with pytest.raises(InstanceError, match="x-2 has no set-up while x-1 has one"):
        dispatch_script("a/b", [instance("x-1", "aaaa", spec={"install": "a"}), instance("x-2", "bbbb")])
    with pytest.raises(InstanceError, match="two instances at base commit aaaa have different set-ups"):
        dispatch_script("a/b", [instance("x-1", "aaaa", spec={"install": "a"}),
                                instance("x-2", "aaaa", spec={"install": "b"})])  # fmt: skip


def test_set_ups_need_mirrors_and_cover_every_instance_of_the_file(tmp_path: Path) -> None:
    every = [instance("x-1", "aaaa", spec={"install": "a"}), instance("x-2", "bbbb", spec={"install": "b"})]
    with pytest.raises(InstanceError, match="need --repos"):
        plan_setups(every, every[:1], RepoSource())
    (tmp_path / "a__b").mkdir()
    (setup,) = plan_setups(every, every[:1], RepoSource(mirrors=tmp_path))
    assert setup.pattern == str((tmp_path / "a__b").resolve()) and setup.script == dispatch_script("a/b", every)
    assert setup.script is not None and "bbbb*" in setup.script  # a subset's run keeps the whole file's script

"""A small SWE-bench-format instance set made from published releases (PyPI sdists, an npm tarball): each release
becomes a git repository, a second commit plants a bug and takes out the tests that catch it (as SWE-bench's
instances hide theirs), and the instance names the gold fix (``patch``), the tests' return (``test_patch``) and
which of the project's own tests fail before the fix and pass after it (FAIL_TO_PASS) or pass throughout
(PASS_TO_PASS). tests/eval/ runs ``overnight eval`` on it; an operator can smoke-test a deployment with it.

    python -m bench.evalset DIR    # DIR/instances.jsonl and DIR/repos/ (the mirrors for --repos): both sets

Downloaded releases are kept in ~/.cache/overnight-eval/artifacts.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ARTIFACTS = Path.home() / ".cache" / "overnight-eval" / "artifacts"
GIT = ["git", "-c", "user.name=Overnight eval", "-c", "user.email=eval@localhost", "-c", "init.defaultBranch=main"]


def pip_sdist(requirement: str) -> list[str]:
    return [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary=:all:", requirement, "-d"]


@dataclass(frozen=True, kw_only=True)
class SampleInstance:
    instance_id: str
    repo: str
    fetch: list[str]
    """Downloads the release into the folder appended to it."""
    artifact: str
    source: str
    correct: str
    buggy: str
    """``correct`` in ``source`` becomes this: the planted bug (and the gold patch turns it back)."""
    test_file: str
    hidden_test: str
    """Taken out of ``test_file`` by the bug's commit; the test patch puts it back."""
    problem_statement: str
    fail_to_pass: list[str]
    pass_to_pass: list[str]
    test_cmd: str | None = None
    test_format: str = "pytest"
    extra: dict[str, str] = field(default_factory=dict)
    spec: dict[str, object] | None = None
    """The instance's set-up, in SWE-bench's spec shape (the ``spec`` field of the instance)."""
    base_files: dict[str, str] = field(default_factory=dict)
    """Files the bug's commit adds (they are in the base commit)."""
    env_files: dict[str, str] = field(default_factory=dict)
    """Files of an environment commit (a child of the base on a branch of its own): the instance's
    ``environment_setup_commit``, as SWE-bench's instances name the commit their environment is built at."""


SAMPLE = [
    SampleInstance(
        instance_id="pypi__inflection-1", repo="pypi/inflection", fetch=pip_sdist("inflection==0.5.1"),
        artifact="inflection-0.5.1.tar.gz", source="inflection/__init__.py",
        correct='    word = word.replace("-", "_")\n    return word.lower()\n',
        buggy='    word = word.replace("-", "_")\n    return word\n',
        test_file="test_inflection.py",
        hidden_test='@pytest.mark.parametrize(\n    ("camel", "underscore"),\n    CAMEL_TO_UNDERSCORE + '
                    'CAMEL_TO_UNDERSCORE_WITHOUT_REVERSE\n)\ndef test_underscore(camel, underscore):\n'
                    '    assert underscore == inflection.underscore(camel)\n\n\n',
        problem_statement="underscore() no longer lower-cases its result\n\n`inflection.underscore('SpecialGuest')` "
                          "returns `'Special_Guest'`; it should return `'special_guest'`, as the documentation "
                          "says (\"Make an underscored, lowercase form from the expression in the string\").",
        fail_to_pass=["test_inflection.py::test_underscore[Product-product]",
                      "test_inflection.py::test_underscore[SpecialGuest-special_guest]",
                      "test_inflection.py::test_underscore[HTMLTidy-html_tidy]"],
        pass_to_pass=["test_inflection.py::test_camelize[SpecialGuest-special_guest]",
                      "test_inflection.py::test_camelize_with_underscores",
                      "test_inflection.py::test_pluralize_plurals",
                      "test_inflection.py::test_uncountable_word_is_not_greedy"],
    ),
    SampleInstance(
        instance_id="pypi__six-1", repo="pypi/six", fetch=pip_sdist("six==1.17.0"), artifact="six-1.17.0.tar.gz",
        source="six.py", correct='    def b(s):\n        return s.encode("latin-1")\n',
        buggy='    def b(s):\n        return s.encode("utf-8")\n', test_file="test_six.py",
        hidden_test='    def test_b():\n        data = six.b("\\xff")\n        assert isinstance(data, bytes)\n'
                    '        assert len(data) == 1\n        assert data == bytes([255])\n\n\n',
        problem_statement="six.b() gives two bytes for one character on Python 3\n\n`six.b('\\xff')` returns "
                          "`b'\\xc3\\xbf'`; a byte literal written as a str must map each character to the byte of "
                          "the same value: `b'\\xff'`.",
        fail_to_pass=["test_six.py::test_b"],
        pass_to_pass=["test_six.py::test_u", "test_six.py::test_int2byte", "test_six.py::test_byte2int",
                      "test_six.py::test_bytesiter"],
    ),
    SampleInstance(
        instance_id="npm__through-1", repo="npm/through", fetch=["npm", "pack", "--silent", "through@2.3.8",
        "--pack-destination"], artifact="through-2.3.8.tgz", source="index.js",
        correct="    }\n    drain()\n    //may have become paused again,\n",
        buggy="    }\n    //may have become paused again,\n", test_file="test/buffering.js",
        hidden_test=(
            "test('buffering has data in queue, when ends', function (assert) {\n\n  /*\n   * If stream ends while "
            "paused with data in the queue,\n   * stream should still emit end after all data is written\n   * on "
            "resume.\n   */\n\n  var ts = through(function (data) {\n    this.queue(data)\n  }, function () {\n"
            "    this.queue(null)\n  })\n\n  var ended = false,  actual = []\n\n  ts.on('data', actual.push.bind("
            "actual))\n  ts.on('end', function () {\n    ended = true\n  })\n\n  ts.pause()\n  ts.write(1)\n  "
            "ts.write(2)\n  ts.write(3)\n  ts.end()\n  assert.deepEqual(actual, [], 'no data written yet, still "
            "paused')\n  assert.ok(!ended, 'end not emitted yet, still paused')\n  ts.resume()\n  assert.deepEqual("
            "actual, [1, 2, 3], 'resumed, all data should be delivered')\n  assert.ok(ended, 'end should be emitted "
            "once all data was delivered')\n  assert.end();\n})\n"
        ),
        problem_statement="A resumed stream does not deliver what was queued while it was paused\n\nWrite to a "
                          "paused through stream, then resume it: the data written meanwhile never comes out, "
                          "and a stream ended while paused never emits 'end'.",
        fail_to_pass=["buffering", "buffering has data in queue, when ends"],
        pass_to_pass=["simple defaults", "simple functions", "pauses", "end only once", "simple async example"],
        test_cmd='for t in test/*.js; do node "$t"; done', test_format="tap",
    ),
]  # fmt: skip


TEST_REQUIREMENTS = "# what the test suite needs besides the project\npytest\n"
SETUP_SAMPLE = [
    SampleInstance(
        instance_id="pypi__inflection-2", repo="pypi/inflection-timeout", fetch=pip_sdist("inflection==0.5.1"),
        artifact="inflection-0.5.1.tar.gz", source="inflection/__init__.py",
        correct="    return word.replace('_', '-')\n", buggy="    return word.replace('_', ' ')\n",
        test_file="test_inflection.py",
        hidden_test='@pytest.mark.parametrize(("input", "expected"), UNDERSCORES_TO_DASHES)\n'
                    'def test_dasherize(input, expected):\n    assert inflection.dasherize(input) == expected\n\n\n',
        problem_statement="dasherize() puts spaces where the dashes go\n\n`inflection.dasherize('street_address')` "
                          "returns `'street address'`; it should return `'street-address'`.",
        fail_to_pass=["test_inflection.py::test_dasherize[street_address-street-address]",
                      "test_inflection.py::test_dasherize[person_street_address-person-street-address]"],
        pass_to_pass=["test_inflection.py::test_dasherize[street-street]",
                      "test_inflection.py::test_pluralize_plurals",
                      "test_inflection.py::test_camelize_with_underscores"],
        # The suite runs under pytest-timeout, which only the environment commit's requirements name: without the
        # set-up, or with the base commit's requirements, pytest stops at "unrecognized arguments: --timeout".
        test_cmd="python -m pytest -rA -p no:cacheprovider --timeout 120 {test_files}",
        spec={"python": "3.11", "packages": "requirements.txt", "reqs_path": ["requirements-test.txt"],
              "install": "pip install --progress-bar off -e ."},
        base_files={"requirements-test.txt": TEST_REQUIREMENTS},
        env_files={"requirements-test.txt": TEST_REQUIREMENTS + "pytest-timeout==2.3.1\n"},
    ),
]  # fmt: skip
"""Instances with a set-up of their own (``spec``, ``environment_setup_commit``): tests/eval/test_setup.py."""


def fetch(sample: SampleInstance) -> Path:
    artifact = ARTIFACTS / sample.artifact
    if not artifact.exists():
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=ARTIFACTS) as scratch:  # a download cut short leaves nothing
            subprocess.run([*sample.fetch, scratch], check=True, capture_output=True, timeout=300)
            (Path(scratch) / sample.artifact).rename(artifact)
    return artifact


def git(repo: Path, *args: str) -> str:
    return subprocess.run([*GIT, "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{path}: the text to replace is not there exactly once"
    path.write_text(text.replace(old, new))


def build_instance(sample: SampleInstance, repos: Path) -> dict[str, object]:
    """The release as a repository at ``repos/OWNER__NAME`` (its bug planted and its tests taken out in a second
    commit, the base) and the instance, with the gold patch and the test patch as diffs against that base."""
    repo = repos / sample.repo.replace("/", "__")
    with tempfile.TemporaryDirectory() as scratch, tarfile.open(fetch(sample)) as archive:
        archive.extractall(scratch, filter="data")
        (top,) = list(Path(scratch).iterdir())
        shutil.rmtree(repo, ignore_errors=True)
        shutil.move(top, repo)
    git(repo, "init", "-q")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", f"release {sample.artifact}")
    _replace(repo / sample.source, sample.correct, sample.buggy)
    _replace(repo / sample.test_file, sample.hidden_test, "")
    for path, text in sample.base_files.items():
        (repo / path).write_text(text)
        git(repo, "add", "--", path)
    git(repo, "commit", "-q", "-am", "a regression")
    base = git(repo, "rev-parse", "HEAD").strip()
    diffs = {}
    for name, path, old, new in (("patch", sample.source, sample.buggy, sample.correct),
                                 ("test_patch", sample.test_file, "", sample.hidden_test)):  # fmt: skip
        original = (repo / path).read_text()
        restored = git(repo, "show", f"HEAD~1:{path}")
        (repo / path).write_text(restored if name == "test_patch" else original.replace(old, new))
        diffs[name] = git(repo, "diff", "--", path)
        git(repo, "checkout", "-q", "--", path)
    instance: dict[str, object] = {
        "instance_id": sample.instance_id, "repo": sample.repo, "base_commit": base,
        "problem_statement": sample.problem_statement, "patch": diffs["patch"], "test_patch": diffs["test_patch"],
        "FAIL_TO_PASS": json.dumps(sample.fail_to_pass), "PASS_TO_PASS": json.dumps(sample.pass_to_pass),
        "version": sample.artifact, "test_format": sample.test_format,
    }  # fmt: skip
    if sample.test_cmd:
        instance["test_cmd"] = sample.test_cmd
    if sample.spec is not None:
        instance["spec"] = sample.spec
    if sample.env_files:
        instance["environment_setup_commit"] = _environment_commit(repo, sample)
    return instance


def _environment_commit(repo: Path, sample: SampleInstance) -> str:
    """A commit after the base, on a branch of its own, with ``env_files``; the repository is left at the base."""
    git(repo, "checkout", "-q", "-b", f"environment/{sample.instance_id}")
    for path, text in sample.env_files.items():
        (repo / path).write_text(text)
        git(repo, "add", "--", path)
    git(repo, "commit", "-q", "-m", "the test suite's requirements")
    commit = git(repo, "rev-parse", "HEAD").strip()
    git(repo, "checkout", "-q", "main")
    return commit


def build_set(folder: Path, samples: list[SampleInstance] = SAMPLE) -> Path:
    """``folder/instances.jsonl`` and the mirrors in ``folder/repos``; returns the instances file."""
    repos = folder / "repos"
    repos.mkdir(parents=True, exist_ok=True)
    path = folder / "instances.jsonl"
    path.write_text("".join(json.dumps(build_instance(sample, repos)) + "\n" for sample in samples))
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m bench.evalset DIR")
    made = build_set(Path(sys.argv[1]).resolve(), SAMPLE + SETUP_SAMPLE)
    print(f"{made}\nrun: overnight eval {made} --repos {made.parent / 'repos'}")

"""The README's layout table names every folder of the repository, and only folders that exist."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _table_folders() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([\w./-]+/)` \|", section, flags=re.M)


def _tracked_top_level_folders() -> set[str]:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return {line.split("/", 1)[0] + "/" for line in files.splitlines() if "/" in line and not line.startswith(".")}


def test_every_top_level_folder_is_in_the_readme_layout_table() -> None:
    listed = set(_table_folders())
    missing = sorted(_tracked_top_level_folders() - listed)
    assert not missing, f"README's layout table lacks {missing}"


def test_every_folder_the_readme_layout_table_names_exists() -> None:
    folders = _table_folders()
    assert folders, "README has no layout table"
    gone = [folder for folder in folders if not (ROOT / folder).is_dir()]
    assert not gone, f"README's layout table names folders that do not exist: {gone}"

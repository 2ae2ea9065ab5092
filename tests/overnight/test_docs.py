from pathlib import Path

from overnight.admin.docs import render_readme

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_settings_table_matches_the_code() -> None:
    text = README.read_text()
    assert render_readme(text) == text, "README settings table is stale: run `python -m overnight.admin.docs README.md`"

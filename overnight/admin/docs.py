"""Reference tables generated from the code, so the README cannot drift from it (checked by a test)."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic.fields import FieldInfo

from overnight.cli.settings import ClientSettings
from overnight.settings import Settings
from overnight.variables import variables

BEGIN = "<!-- settings-table:begin -->"
END = "<!-- settings-table:end -->"


def _rows(fields: Iterable[tuple[str, FieldInfo]]) -> list[str]:
    rows: dict[str, str] = {}
    for name, field in fields:
        default = field.get_default(call_default_factory=False)
        shown = "(computed)" if field.default_factory is not None else ("" if default is None else f"`{default}`")
        description = " ".join((field.description or "").split())
        rows.setdefault(name, f"| `{name}` | {shown} | {description} |")  # a variable that sets two fields: once
    return list(rows.values())


def settings_table() -> str:
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    lines += _rows((variable.name, variable.field) for variable in variables(Settings))
    lines += ["", "Client side (the `overnight` CLI):", "", "| variable | default | meaning |", "|---|---|---|"]
    lines += _rows((f"OVERNIGHT_{name.upper()}", field) for name, field in ClientSettings.model_fields.items())
    return "\n".join(lines)


def render_readme(text: str) -> str:
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{settings_table()}\n{END}{tail}"


if __name__ == "__main__":  # python -m overnight.admin.docs README.md
    import sys
    from pathlib import Path

    path = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    path.write_text(render_readme(path.read_text()))

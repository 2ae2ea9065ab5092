"""The flat ``OVERNIGHT_*`` variables of the nested server settings: their names, and the pydantic-settings source
that reads them from the environment and the ``.env`` file.

A field of a part is ``<PREFIX><PART>_<FIELD>`` (a model nested in the part adds nothing: ``sandbox.limits.memory``
is ``OVERNIGHT_SANDBOX_MEMORY``), a top-level field ``<PREFIX><FIELD>``; the settings class names the exceptions
in its ``renamed`` and leaves out the fields of the parts' own types that are not settings (``not_settings``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsError


@dataclass(frozen=True, kw_only=True)
class Variable:
    """One variable and the field it sets."""

    name: str
    path: tuple[str, ...]
    field: FieldInfo


def variables(settings_cls: type[BaseSettings]) -> list[Variable]:
    """Every variable of ``settings_cls``, in the order of its fields (one name may set two fields)."""
    prefix = settings_cls.model_config.get("env_prefix", "")
    renamed: dict[str, str] = getattr(settings_cls, "renamed", {})
    not_settings: frozenset[str] = getattr(settings_cls, "not_settings", frozenset())
    found: list[Variable] = []

    def walk(fields: dict[str, FieldInfo], path: tuple[str, ...]) -> None:
        for name, field in fields.items():
            here = (*path, name)
            dotted = ".".join(here)
            nested = getattr(field.annotation, "__pydantic_fields__", None)  # a model or a pydantic dataclass
            if dotted in not_settings:
                continue
            if nested is not None:
                walk(nested, here)
                continue
            default = f"{prefix}{here[0]}_{name}" if path else f"{prefix}{name}"
            found.append(Variable(name=renamed.get(dotted, default.upper()), path=here, field=field))

    walk(settings_cls.model_fields, ())
    return found


class VariablesSource(PydanticBaseSettingsSource):
    """The variables one of pydantic-settings' own sources read (the environment, or the ``.env`` file), each
    parsed as that source parses it and put in place in the nested settings."""

    def __init__(self, settings_cls: type[BaseSettings], read: EnvSettingsSource) -> None:
        super().__init__(settings_cls)
        self.read = read

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        """One top-level field's value (a part's is a dict of its own fields), as ``__call__`` puts it together."""
        value = self().get(field_name)
        return value, field_name, isinstance(value, dict)

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for variable in variables(self.settings_cls):
            raw = self.read.env_vars.get(variable.name if self.read.case_sensitive else variable.name.lower())
            if raw is None:
                continue
            try:
                value = self.read.prepare_field_value(variable.name, variable.field, raw, False)
            except ValueError as exc:
                raise SettingsError(f"{variable.name}: {exc}") from exc
            *parents, last = variable.path
            node = values
            for key in parents:
                node = node.setdefault(key, {})
            node[last] = value
        return values

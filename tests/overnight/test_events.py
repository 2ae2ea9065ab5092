"""The event models on their own: one definition the store, the API and the client share, documented as
they are, loading nothing of the server, and readable by a client across versions."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest

from overnight.events import EVENT_MODELS, StateEvent, TaskStateName, UnreadableEvent, parse_event
from store.models import TaskState

DOCS = Path(__file__).parents[2] / "docs" / "events.md"


def test_the_state_event_names_exactly_the_task_states() -> None:
    assert list(get_args(TaskStateName)) == [state.value for state in TaskState]


def test_the_docs_table_lists_every_type_with_exactly_its_fields() -> None:
    rows = {}
    for line in DOCS.read_text().splitlines():
        if match := re.fullmatch(r"\| `(\w+)` \| (.*?) \| .* \|", line):
            rows[match[1]] = set(re.findall(r"`(\w+)`", match[2]))
    assert set(rows) == set(EVENT_MODELS)
    for type_, model in EVENT_MODELS.items():
        fields = set(model.model_fields) - {"type"}
        if type_ == "model_response":  # the usage's own fields are listed beside it
            fields |= {"prompt_tokens", "completion_tokens", "cached_tokens"}
        assert rows[type_] - {"sandbox"} == fields, type_


def test_the_event_models_load_nothing_of_the_server() -> None:
    code = (
        "import sys, overnight.events; print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('api', 'worker', 'store', 'agent', 'sandbox', 'fastapi', 'sqlalchemy') or "
        "(m.startswith('overnight.') and m != 'overnight.events')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_a_client_reads_a_newer_servers_event_and_drops_the_fields_it_does_not_know() -> None:
    data = {"state": "running", "reason": None, "attempt": 2}
    with pytest.raises(UnreadableEvent, match="attempt: Extra inputs are not permitted"):
        parse_event("state", data)
    assert parse_event("state", data, ignore_unknown_fields=True) == StateEvent(state="running")

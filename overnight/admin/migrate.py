"""``overnight migrate``: the database schema brought to the newest revision."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

from overnight.broker import redact
from overnight.settings import Settings


def run_migrate(*, as_json: bool, say: Callable[[str], None]) -> None:
    from store.engine import make_engine, migrate

    url = Settings().resolved_database_url
    migrate(make_engine(url))
    if as_json:
        sys.stdout.write(json.dumps({"database": redact(url), "migrated": True}) + "\n")
    else:
        say(f"{redact(url)}: migrated")

"""``overnight secrets new-key|rotate``: the server key environments' secrets are sealed with.

Rotation, in order: put a new key first in OVERNIGHT_SECRETS_KEY (or the key file), the old ones after it, on
the API and every worker; restart them; ``overnight secrets rotate`` re-seals every stored secret under the
first key; then drop the old keys (docs/environments.md).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

from overnight.secrets import SecretsUnavailable, new_key
from overnight.settings import Settings

Say = Callable[[str], None]


def print_new_key() -> None:
    sys.stdout.write(new_key() + "\n")


def rotate(*, as_json: bool, say: Say) -> int:
    """Re-seal every secret under the first key, in one transaction; 2 when the keys cannot open one."""
    import store.environments
    from store.engine import make_engine, make_sessionmaker, migrate

    settings = Settings()
    try:
        box = settings.secrets.box()
    except SecretsUnavailable as exc:
        say(f"error: {exc}")
        return 2
    engine = make_engine(settings.resolved_database_url)
    migrate(engine)
    try:
        with make_sessionmaker(engine).begin() as session:
            rows = store.environments.every_secret(session)
            for secret, _pattern in rows:
                secret.ciphertext = box.rotate(secret.ciphertext)
    except SecretsUnavailable as exc:
        say(f"error: {exc}; nothing was changed (every key that sealed a secret must be listed)")
        return 2
    finally:
        engine.dispose()
    if as_json:
        sys.stdout.write(json.dumps({"rotated": len(rows), "keys": box.key_count}) + "\n")
    else:
        say(f"re-sealed {len(rows)} secret(s) under the first of {box.key_count} key(s); the others may go now")
    return 0

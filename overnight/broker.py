"""Choosing the Celery broker: the configured one, else local Redis when it answers, else a SQLite file."""

from __future__ import annotations

import redis

from overnight.settings import Settings

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except redis.RedisError:
        return False


def resolve_broker_url(settings: Settings, *, local_redis: str = DEFAULT_REDIS_URL) -> tuple[str, str]:
    """The broker URL and a sentence saying which broker it is and why."""
    if settings.broker_url:
        return settings.broker_url, f"broker: {redact(settings.broker_url)} (OVERNIGHT_BROKER_URL)"
    if redis_answers(local_redis):
        return local_redis, f"broker: Redis at {local_redis}"
    url = settings.sql_broker_url()
    return url, (
        f"broker: no Redis answered at {local_redis}; using Celery's SQLAlchemy transport on "
        f"{url.removeprefix('sqla+sqlite:///')} (a real broker with no server to run)"
    )


def redact(url: str) -> str:
    """``url`` without its password, for logs."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user + ':***' if ':' in credentials else user}@{host}"

"""The one way the product opens Redis: :func:`connect` turns the settings into a redis-py
client, on a plain ``redis://`` server or on the master that Redis Sentinel names.

Each process calls it when it starts (or on first use) and passes the client to what needs
it: the ledger, the producer's dedupe and rate limits, heartbeats, the decision lock,
readiness. The Celery broker reads the same settings (config/celery_app.py), so broker and
clients always talk to the same Redis.

With Sentinel the client asks the sentinels for the master when it opens a connection and
again after a connection fails, and redis-py turns a write refused by a demoted master
(``READONLY``) into a connection error, so a command retried after a failover reaches the
new master (redis-py's ``redis/sentinel.py``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel

from config.settings import SENTINEL_SCHEME, Settings

SENTINEL_PORT = 26379
# How long one question to a sentinel may take, in seconds: a sentinel that does not answer
# in time is skipped for the next one.
SENTINEL_TIMEOUT_S = 2.0


def sentinel_addresses(url: str) -> list[tuple[str, int]]:
    """The (host, port) of every sentinel in a ``sentinel://…;sentinel://…`` URL."""
    out = []
    for part in url.split(";"):
        where = urlsplit(part)
        if where.scheme == SENTINEL_SCHEME and where.hostname:
            out.append((where.hostname, where.port or SENTINEL_PORT))
    return out


def sentinel_options(settings: Settings) -> dict[str, Any]:
    """Connection arguments for the sentinels themselves (redis-py's ``sentinel_kwargs``,
    also handed to kombu's Sentinel transport)."""
    options: dict[str, Any] = {
        "socket_timeout": SENTINEL_TIMEOUT_S,
        "socket_connect_timeout": SENTINEL_TIMEOUT_S,
    }
    if settings.redis_sentinel_password is not None:
        options["password"] = settings.redis_sentinel_password.get_secret_value()
    return options


def connect(
    settings: Settings, *, timeout_s: float | None = None, connect_timeout_s: float | None = None
) -> redis.Redis:
    """A client of the product's Redis (``TRIAGE_REDIS_URL``): the server itself, or the
    current master behind the sentinels. Nothing connects until the first command."""
    timeouts: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": connect_timeout_s if connect_timeout_s is not None else timeout_s,
    }
    if not settings.uses_sentinel:
        return redis.Redis.from_url(settings.redis_url, **timeouts)
    # kombu's form: the Redis server's credentials and database number are the first URL's.
    first = urlsplit(settings.redis_url.split(";")[0])
    db = first.path.strip("/")
    sentinel = Sentinel(
        sentinel_addresses(settings.redis_url),
        sentinel_kwargs=sentinel_options(settings),
        username=unquote(first.username) if first.username else None,
        password=unquote(first.password) if first.password else None,
        db=int(db) if db else 0,
        **timeouts,
    )
    client: redis.Redis = sentinel.master_for(settings.redis_sentinel_master)
    return client

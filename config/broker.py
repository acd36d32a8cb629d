"""kombu's Redis transport with one fix: a worker survives a Redis restart under load.

kombu 5.7 / Celery 5.7, measured (tests/test_broker_restart.py): when Redis goes away, the
consumer's ``on_connection_error_after_connected`` first calls ``Connection.collect()``,
whose channel close is interrupted by the dead socket (a pending ``BRPOP`` read) and which
then detaches the transport (``transport.client = None``); it then calls
``Connection.close()``, which closes the same channel again. This time the close reaches
``QoS.restore_unacked_once()``, which, when the worker holds unacked messages (any
moment under load), asks the channel for a new connection pool, built from
``self.connection.client.hostname``: ``AttributeError: 'NoneType' object has no attribute
'hostname'``. That is not a connection error, so ``ignore_errors`` lets it through and the
worker process exits with "Unrecoverable error" (2 of 2 Redis restarts at 20-40 tickets/s).
kombu#582 (celery/kombu, "Error on restarting Gossip") is the same failure reached from
another close path.

Here a channel whose transport is detached raises a *connection* error instead when it
needs a new pool, which every close path already ignores. Nothing is lost by not restoring
the unacked messages at that moment (Redis is down then anyway): they stay in Redis's
``unacked`` hash and come back after the visibility timeout, and a redelivered ticket that
was decided meanwhile is absorbed (decisions are keyed by ticket).

kombu's Sentinel transport (``sentinel://`` URLs) builds its pools through the same
``_connparams``, and a Sentinel failover is exactly such a lost connection: it gets the
same fix.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError


class _RaisesWhenDetached:
    connection: Any

    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise RedisConnectionError("the broker connection is closed (transport detached)")
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[misc]


class Channel(_RaisesWhenDetached, kombu_redis.Channel):  # type: ignore[misc]
    pass


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = Channel


class SentinelChannel(_RaisesWhenDetached, kombu_redis.SentinelChannel):  # type: ignore[misc]
    pass


class SentinelTransport(kombu_redis.SentinelTransport):  # type: ignore[misc]
    Channel = SentinelChannel


#: Celery's ``broker_transport`` for a ``redis://`` broker URL.
TRANSPORT = f"{__name__}:Transport"
#: Celery's ``broker_transport`` for a ``sentinel://`` broker URL.
SENTINEL_TRANSPORT = f"{__name__}:SentinelTransport"

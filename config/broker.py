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
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError


class Channel(kombu_redis.Channel):  # type: ignore[misc]
    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            raise RedisConnectionError("the broker connection is closed (transport detached)")
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]


class Transport(kombu_redis.Transport):  # type: ignore[misc]
    Channel = Channel


#: Celery's ``broker_transport`` for a ``redis://`` broker URL.
TRANSPORT = f"{__name__}:Transport"

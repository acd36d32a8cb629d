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
same fix. Celery's ``broker_transport`` alone does not keep it there: a Sentinel URL lists
every sentinel with ``;``, kombu takes those as failover alternates, and after a lost
connection ``Connection.switch()`` moves to the next one with the transport its *scheme*
names ("parse_url() sets transport to the raw URL scheme, overriding any transport given at
construction time", kombu/connection.py). So kombu's own transport came back after the first
failover and the second one killed the worker (measured: tests/test_sentinel.py with
TRIAGE_FAULTS=full). The schemes therefore name these transports in kombu's alias table, in
every process that imports this module (all of the product's, through config/celery_app.py).
"""

from __future__ import annotations

from typing import Any

from kombu.transport import TRANSPORT_ALIASES
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

# What the URL schemes resolve to, also after a failover switches URLs (see above).
TRANSPORT_ALIASES["redis"] = TRANSPORT
TRANSPORT_ALIASES["sentinel"] = SENTINEL_TRANSPORT

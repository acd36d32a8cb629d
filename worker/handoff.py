"""What a decision section's holder hands the next waiter before its commit: its rows.

A worker waiting for a scope's decision lock must, once inside, catch up with what the
holder before it committed (worker/pipeline.py, step 3c): read those tickets, score its
batch against them, route again the tickets they reach. With the lock saturated that is
most of the section's own work, done while every other worker waits. So the holder, its
routing final, hands the rows it is about to commit to the first waiter (over the lock's
Redis channel, worker/decision_lock.py), which catches up with them while it waits. Inside
its section the waiter takes that work only if the tickets it finds committed since its
view are exactly those rows (same keys, same contents, in the same order); anything else
(a holder that failed to commit, a purge that erased a text, another holder first) and it
catches up with what was committed, as without a hand-off.

The rows go as JSON and the vectors' bytes, never pickled: Redis is shared by every worker,
and no worker runs what another sends.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from tickets.db import StoredTicket, stored_ticket
from tickets.model import TicketKey

_VERSION = 1


def stored_rows(
    ticket_rows: Sequence[Mapping[str, Any]], decision_rows: Sequence[Mapping[str, Any]]
) -> list[StoredTicket]:
    """The tickets as the next section will read them back once committed, without their
    ids, which the commit gives (0 here)."""
    decided = {(d["source"], d["ticket_id"]): d for d in decision_rows}
    return [
        stored_ticket(row, decided.get((row["source"], row["ticket_id"]), {}))
        for row in ticket_rows
    ]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# The message: this header (version, length of the JSON part), the tickets as JSON, then
# their vectors' bytes one after the other (the JSON gives each one's length).
_HEADER = struct.Struct("!BI")


def _micros(value: datetime | None) -> int | None:
    # Exact, unlike a float timestamp: the section compares what it reads back with it.
    return None if value is None else (_utc(value) - _EPOCH) // _MICROSECOND


def _time(value: int | None) -> datetime | None:
    return None if value is None else _EPOCH + value * _MICROSECOND


def encode(tickets: Sequence[StoredTicket]) -> bytes:
    """The hand-off message."""
    rows = [
        [
            t.key.source,
            t.key.ticket_id,
            t.subject,
            t.body,
            t.body_format,
            t.queue,
            -1 if t.vector is None else len(t.vector),
            t.readable,
            t.route,
            t.canonical.source,
            t.canonical.ticket_id,
            _micros(t.stored_at),
            _micros(t.received_at),
            t.status,
        ]
        for t in tickets
    ]
    meta = json.dumps(rows, ensure_ascii=False, separators=(",", ":")).encode()
    vectors = b"".join(t.vector for t in tickets if t.vector is not None)
    return _HEADER.pack(_VERSION, len(meta)) + meta + vectors


def decode(data: bytes) -> list[StoredTicket] | None:
    """The tickets handed (ids 0); None for a message this version does not read."""
    try:
        version, size = _HEADER.unpack_from(data)
        if version != _VERSION:
            return None
        at = _HEADER.size + size
        out = []
        for row in json.loads(data[_HEADER.size : at]):
            (source, ticket_id, subject, body, body_format, queue, length) = row[:7]
            (readable, route, c_source, c_ticket_id, stored_at, received_at, status) = row[7:]
            vector = None
            if length >= 0:
                vector, at = data[at : at + length], at + length
            stored = _time(stored_at)
            if stored is None:
                return None
            out.append(
                StoredTicket(
                    id=0,
                    key=TicketKey(source, ticket_id),
                    subject=subject,
                    body=body,
                    body_format=body_format,
                    queue=queue,
                    vector=vector,
                    readable=readable,
                    route=route,
                    canonical=TicketKey(c_source, c_ticket_id),
                    stored_at=stored,
                    received_at=_time(received_at),
                    status=status,
                )
            )
        return out if at == len(data) else None
    except (ValueError, KeyError, TypeError, struct.error):
        return None


def _utc(value: datetime) -> datetime:
    # SQLite reads a stored time back without its zone: it was written in UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _comparable(t: StoredTicket) -> tuple[object, ...]:
    """Every field but the id (the commit gives it), times in UTC."""
    received = None if t.received_at is None else _utc(t.received_at)
    return (
        t.key,
        t.subject,
        t.body,
        t.body_format,
        t.queue,
        t.vector,
        t.readable,
        t.route,
        t.canonical,
        _utc(t.stored_at),
        received,
        t.status,
    )


def same(handed: Sequence[StoredTicket], committed: Sequence[StoredTicket]) -> bool:
    """Whether the tickets committed (in id order) are the ones handed, in that order."""
    return len(handed) == len(committed) and all(
        _comparable(h) == _comparable(c) for h, c in zip(handed, committed, strict=True)
    )

"""Key lookups (tickets/db.py key_filter) as PostgreSQL's planner runs them."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine, select, text, union_all
from sqlalchemy.orm import Session

from tests.conftest import decision_row
from tickets import db
from tickets import purge as purge_sql
from tickets.db import TicketRow, key_filter, make_engine
from tickets.model import Ticket, TicketKey

_TICKETS = """
INSERT INTO triage_tickets
    (source, ticket_id, body, tags, received_at, content_hash, backfill, model, stored_at)
SELECT :source, :prefix || g, 'body ' || g, '[]', now(), '', false, 'm', now()
FROM generate_series(1, :n) AS g
"""


def _plan_nodes(engine: Engine, statement: Any) -> list[dict[str, Any]]:
    compiled = statement.compile(
        dialect=engine.dialect, compile_kwargs={"render_postcompile": True}
    )
    with engine.connect() as conn:
        plan = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {compiled}", compiled.params).scalar()
    nodes, todo = [], [(plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"]]
    while todo:
        node = todo.pop()
        nodes.append(node)
        todo.extend(node.get("Plans", []))
    return nodes


def test_a_key_lookup_probes_the_key_index_for_a_source_the_statistics_have_not_seen(
    postgres_url: str,
) -> None:
    """A new helpdesk on a large table: until the next ANALYZE, the planner takes its
    source for a rare one. Looking its tickets up by key must still probe the unique
    (source, ticket_id) index, not read every ticket of the source through (source, id)."""
    engine = make_engine(postgres_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE triage_tickets SET (autovacuum_enabled = false)"))
            conn.execute(text(_TICKETS), {"source": "zendesk", "prefix": "z", "n": 5000})
            conn.execute(text("ANALYZE triage_tickets"))
            conn.execute(text(_TICKETS), {"source": "github", "prefix": "g", "n": 3000})
        keys = [TicketKey("github", f"g{i}") for i in range(1, 33)]
        keys += [TicketKey("zendesk", "z7"), TicketKey("github", "absent")]
        lookup = select(TicketRow.id, TicketRow.source, TicketRow.ticket_id).where(
            key_filter(TicketRow, keys)
        )
        nodes = _plan_nodes(engine, lookup)
        indexes = {n["Index Name"] for n in nodes if "Index Name" in n}
        assert indexes == {"uq_triage_tickets_key"}, nodes
        assert not [n for n in nodes if n["Node Type"] == "Seq Scan"], nodes
        with Session(engine) as session:
            found = {TicketKey(s, t) for _, s, t in session.execute(lookup)}
            assert found == set(keys) - {TicketKey("github", "absent")}
            # The same filter inside a union, an UPDATE and the purge's lookup.
            marks = db.view_marks(session, keys[:3], after_id=10**9)
            assert marks.stored == set(keys[:3]) and not marks.since
            assert not purge_sql.purged(session, keys)
            both = union_all(
                select(TicketRow.ticket_id).where(key_filter(TicketRow, keys[:2])),
                select(TicketRow.ticket_id).where(key_filter(TicketRow, keys[-2:])),
            )
            assert sorted(session.scalars(both)) == ["g1", "g2", "z7"]
    finally:
        engine.dispose()


def test_the_views_check_reads_whole_the_tickets_above_a_given_id(database_url: str) -> None:
    """view_marks(read_after=N): the scope's tickets committed above N come with the check,
    as stored_tickets reads them (decisions joined, datetimes typed on SQLite too); none
    at or below N, and none without it."""
    from datetime import UTC, datetime

    engine = make_engine(database_url)
    now = datetime.now(UTC)
    try:
        with Session(engine) as session:
            rows = [
                db.ticket_values(
                    Ticket(source="s", ticket_id=f"t{i}", subject=f"s{i}", body=f"body {i}"),
                    content_hash=f"h{i}",
                    backfill=True,
                    model="m",
                    vector=bytes([i]) * 8,
                )
                | {"stored_at": now}
                for i in range(1, 6)
            ]
            db.save_batch(session, rows, [])
            session.add(
                decision_row(
                    "t5",
                    source="s",
                    route="duplicate",
                    canonical_source="s",
                    canonical_ticket_id="t1",
                )
            )
            session.commit()
            ids = sorted(session.scalars(select(TicketRow.id)))
            keys = [TicketKey("s", "t2"), TicketKey("s", "absent")]
            plain = db.view_marks(session, keys, after_id=ids[0])
            marks = db.view_marks(session, keys, after_id=ids[0], read_after=ids[2])
            assert plain.stored == marks.stored == {TicketKey("s", "t2")}
            assert plain.since == marks.since == set(ids[1:])
            assert not plain.rows
            assert marks.rows == {t.id: t for t in db.stored_tickets(session, ids=ids[3:])}
            whole = marks.rows[ids[4]]
            assert whole.route == "duplicate" and whole.canonical == TicketKey("s", "t1")
            assert whole.vector == bytes([5]) * 8 and isinstance(whole.stored_at, datetime)
            assert marks.rows[ids[3]].route == "history"
    finally:
        engine.dispose()

"""Key lookups (tickets/db.py key_filter) as PostgreSQL's planner runs them."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine, select, text, union_all
from sqlalchemy.orm import Session

from tickets import db
from tickets import purge as purge_sql
from tickets.db import TicketRow, key_filter, make_engine
from tickets.model import TicketKey

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

"""`triage purge`: a purged ticket's text appears nowhere (every SQL column, Chroma, the
worker's lexical index and caches, Redis, the read API and the dashboard), its decision
stays; and a purge while a worker decides loses no decision."""

from __future__ import annotations

import base64
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import chromadb
import pytest
import redis
import requests
from sqlalchemy import func, inspect, select, text
from sqlalchemy.orm import Session

from config.celery_app import create_app
from config.settings import Settings
from tests.conftest import (
    WorkerProcess,
    decisions,
    ingest,
    n_rows,
    rows,
    run_triage,
    tickets_csv,
    wait_for,
)
from tests.services import ServeProcess
from tickets import db
from tickets.ledger import Ledger
from tickets.model import Ticket, TicketKey
from tickets.outbox import ActionRow
from tickets.purge import PurgeRow, PurgeRunRow
from tickets.queue import publish
from worker.embedding.local import LocalEmbedder
from worker.lexical import LexicalIndex
from worker.pipeline import Services, VectorCache, WorkItem, triage_batch
from worker.purge import PurgeWatch, purge, scrub_redis
from worker.routing import Thresholds
from worker.store import VectorStore

READ_TOKEN = "rd-5e1b7a9c33d2f0"
TOKENS = {READ_TOKEN: ["read"]}


def _sql_cells_with(url: str, marker: str) -> list[str]:
    """Every table and column of the database, scanned generically: where ``marker`` is."""
    engine = db.make_engine(url)
    found = []
    try:
        with engine.connect() as conn:
            for table in inspect(conn).get_table_names():
                for row in conn.execute(text(f'SELECT * FROM "{table}"')).mappings():
                    for column, value in row.items():
                        cell = (
                            value.decode("latin-1")
                            if isinstance(value, bytes | memoryview)
                            else json.dumps(value, default=str)
                        )
                        if isinstance(value, memoryview):
                            cell = bytes(value).decode("latin-1")
                        if marker in cell:
                            found.append(f"{table}.{column}")
    finally:
        engine.dispose()
    return found


def _redis_with(client: redis.Redis, marker: str) -> list[str]:
    """Every key of this Redis database whose value holds ``marker``."""
    found = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()  # type: ignore[union-attr]
        values: list[Any]
        if kind == "string":
            values = [client.get(key)]
        elif kind == "list":
            values = list(client.lrange(key, 0, -1))  # type: ignore[arg-type]
        elif kind == "hash":
            values = [*client.hgetall(key).items()]  # type: ignore[union-attr]
        elif kind == "zset":
            values = list(client.zrange(key, 0, -1))  # type: ignore[arg-type]
        elif kind == "set":
            values = list(client.smembers(key))  # type: ignore[arg-type]
        else:
            values = []
        if marker.encode() in repr(values).encode() or marker.encode() in key:
            found.append(key.decode())
    return found


def _insert_text_rows(url: str, key: TicketKey, marker: str) -> None:
    """What else quotes a ticket: an agent's comment, a failure payload, an outbox action."""
    engine = db.make_engine(url)
    now = datetime.now(UTC)
    try:
        with engine.begin() as conn:
            conn.execute(
                db.FeedbackRow.__table__.insert(),
                [
                    {
                        "source": key.source,
                        "ticket_id": key.ticket_id,
                        "verdict": "confirm",
                        "agent": "ana",
                        "comment": f"customer said {marker}",
                        "route": "manual",
                        "score": None,
                        "created_at": now,
                    }
                ],
            )
            conn.execute(
                db.FailureRow.__table__.insert(),
                [
                    {
                        "source": key.source,
                        "ticket_id": key.ticket_id,
                        "error_type": "X",
                        "reason": "test",
                        "attempts": 1,
                        "payload": {"subject": marker, "body": marker},
                        "failed_at": now,
                        "mode": "route",
                        "redrive_count": 0,
                    }
                ],
            )
            conn.execute(
                ActionRow.__table__.insert(),
                [
                    {
                        "action_id": f"msg_{uuid.uuid4().hex}",
                        "source": key.source,
                        "ticket_id": key.ticket_id,
                        "kind": "webhook",
                        "target": "https://hooks.example.com/x",
                        "payload": {"subject": marker, "route": "manual"},
                        "status": "dead",
                        "attempts": 1,
                        "next_attempt_at": now,
                        "last_error": f"400 echo {marker}",
                        "created_at": now,
                    }
                ],
            )
    finally:
        engine.dispose()


def _assert_served(serve: ServeProcess, marker: str, *, shown: bool) -> None:
    """Whether the read API and the dashboard pages show ``marker`` (they always answer)."""
    bearer = {"Authorization": f"Bearer {READ_TOKEN}"}
    texts = []
    for path in ("/v1/decisions/e2e/t0", "/v1/decisions"):
        r = requests.get(f"{serve.url}{path}", headers=bearer, timeout=10)
        assert r.status_code == 200, (path, r.status_code)
        texts.append(r.text)
    assert requests.get(f"{serve.url}/v1/decisions/e2e/t0", headers=bearer, timeout=10).json()[
        "route"
    ]
    browser = requests.Session()
    for path in ("/dashboard", "/dashboard/data", "/dashboard/review"):
        r = browser.get(f"{serve.url}{path}", params={"token": READ_TOKEN}, timeout=10)
        assert r.status_code == 200, (path, r.status_code)
        texts.append(r.text)
    if shown:
        assert marker in texts[0]  # the decision's subject
    else:
        assert all(marker not in t for t in texts)


def _search_keys(settings: Settings, words: str) -> list[str]:
    """The keys `triage search` lists (answered by the running worker: its index, store)."""
    out = run_triage(settings, "search", words, "-k", "10")
    assert out.returncode == 0, out.stderr
    return [line.split()[2] for line in out.stdout.splitlines() if ":" in line]


def test_purged_ticket_text_appears_nowhere(
    make_settings: Callable[..., Settings],
    database_url: str,
    queue_name: str,
    redis_url: str,
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    marker = f"zq{uuid.uuid4().hex[:12]}"
    settings = make_settings(database_url=database_url, queue=queue_name, api_tokens=TOKENS)
    worker = start_worker(settings)
    gone = TicketKey("e2e", "t0")
    csv = tickets_csv(
        tmp_path / "t.csv",
        [
            ("t0", f"Refund for {marker}", f"My name is {marker}, refund order 7 please"),
            ("t1", "Printer jams", "The office printer jams on every page"),
            ("t2", "Refund please", "Please refund order 8"),
            ("t3", "Login fails", "I cannot log in since Monday"),
        ],
    )
    ingest(settings, csv)
    wait_for(lambda: n_rows(database_url, db.DecisionRow) == 4, 120, "4 decisions")
    _insert_text_rows(database_url, gone, marker)
    # The read API and the dashboard of a real served app show it (before the purge).
    serve = ServeProcess(settings, tmp_path / "serve.log")
    _assert_served(serve, marker, shown=True)
    # The worker's lexical index holds the ticket: BM25 finds it by the marker alone.
    assert "e2e:t0" in _search_keys(settings, marker)
    assert set(_sql_cells_with(database_url, marker)) >= {
        "triage_tickets.subject",
        "triage_tickets.body",
        "triage_decisions.subject",
        "triage_feedback.comment",
        "triage_failures.payload",
        "triage_actions.payload",
    }

    # The helpdesk sends the ticket again while no worker runs: it waits in the queue.
    worker.stop()
    app = create_app(settings)
    client = redis.Redis.from_url(redis_url)
    ledger = Ledger(client, queue_name)
    again = Ticket(source="e2e", ticket_id="t0", subject=f"Refund for {marker}", body=marker)
    list(publish(app, [again], queue=queue_name, ledger=ledger))
    assert _redis_with(client, marker)

    out = run_triage(settings, "purge", "--ticket", "e2e:t0", "--by", "dpo@example.com")
    assert out.returncode == 0, out.stderr
    counts = json.loads(out.stdout)
    assert counts["tickets"] == 1 and counts["decisions"] == 1 and counts["queued"] == 1
    assert counts["failures"] == 1 and counts["feedback"] == 1 and counts["actions"] == 1
    assert _redis_with(client, marker) == []

    # A worker starts (it deletes the vector from its store) and the helpdesk sends the
    # ticket once more after the purge: decided or not, it is not stored with its text.
    worker = start_worker(settings)
    list(publish(app, [again], queue=queue_name, ledger=ledger))
    wait_for(lambda: ledger.size() == 0 and client.llen(queue_name) == 0, 120, "the resend")
    # The worker's lexical index and store no longer find it.
    assert "e2e:t0" not in _search_keys(settings, f"{marker} refund order 7")

    # Every SQL table and column.
    assert _sql_cells_with(database_url, marker) == []
    decided = decisions(database_url)
    assert set(decided) == {"t0", "t1", "t2", "t3"} and decided["t0"].subject is None
    [run] = rows(database_url, PurgeRunRow)
    assert run.requested_by == "dpo@example.com" and run.reason == "erasure"
    assert [(p.source, p.ticket_id) for p in rows(database_url, PurgeRow)] == [("e2e", "t0")]

    _assert_served(serve, marker, shown=False)
    serve.stop()

    # Chroma (the worker stopped: the embedded store is its own).
    worker.stop()
    chroma = chromadb.PersistentClient(path=str(settings.chroma_path))
    for collection in chroma.list_collections():
        got = chroma.get_collection(collection.name).get(include=["metadatas", "documents"])
        assert "e2e:t0" not in got["ids"]
        assert marker not in json.dumps(got, default=str)
        assert {"e2e:t1", "e2e:t2", "e2e:t3"} <= set(got["ids"])
    assert _redis_with(client, marker) == []


def test_lexical_forget_drops_the_terms() -> None:
    index = LexicalIndex()
    index.add(TicketKey("s", "1"), "unique zebra words here")
    index.add(TicketKey("s", "2"), "shared words there")
    before = index.scores("words")
    assert index.forget([TicketKey("s", "1"), TicketKey("s", "9")]) == 1
    assert "zebra" not in index._postings and "unique" not in index._postings
    assert TicketKey("s", "1") not in index
    after = index.scores("zebra words")
    assert after[0] == 0 and after[1] > 0 and before[0] > 0
    assert index.top(index.scores("zebra"), 5) == []


def test_purge_while_a_worker_decides_loses_no_decision(
    make_settings: Callable[..., Settings],
    database_url: str,
    queue_name: str,
    tmp_path: Path,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    settings = make_settings(database_url=database_url, queue=queue_name, batch_size=8)
    start_worker(settings)
    n = 120
    csv = tickets_csv(
        tmp_path / "t.csv",
        [(f"p{i}", f"Ticket {i}", f"Order {i} arrived broken, part {i % 7}") for i in range(n)],
    )
    ingest(settings, csv)
    wait_for(lambda: n_rows(database_url, db.DecisionRow) >= n // 4, 120, "some decisions")
    # Every ticket received before now whose row exists, while the rest are being decided.
    out = run_triage(settings, "purge", "--older-than", "0h")
    assert out.returncode == 0, out.stderr
    purged = json.loads(out.stdout)["tickets"]
    assert purged >= n // 4
    wait_for(lambda: n_rows(database_url, db.DecisionRow) == n, 180, "every decision")
    assert n_rows(database_url, db.FailureRow) == 0
    tombstoned = {p.ticket_id for p in rows(database_url, PurgeRow)}
    assert len(tombstoned) == purged
    engine = db.make_engine(database_url)
    try:
        with engine.connect() as conn:
            for tid, subject, body, vector in conn.execute(
                select(
                    db.TicketRow.ticket_id,
                    db.TicketRow.subject,
                    db.TicketRow.body,
                    db.TicketRow.vector,
                )
            ):
                if tid in tombstoned:
                    assert subject is None and body == "" and vector is None, tid
                else:
                    assert body, tid
            subjects = dict(
                conn.execute(select(db.DecisionRow.ticket_id, db.DecisionRow.subject)).all()
            )
    finally:
        engine.dispose()
    assert all(subjects[t] is None for t in tombstoned)
    assert sum(1 for t, s in subjects.items() if t not in tombstoned and s) == n - purged


def test_retention_runs_once_a_day_for_the_deployment(
    make_settings: Callable[..., Settings],
    database_url: str,
    queue_name: str,
    redis_url: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    settings = make_settings(database_url=database_url, queue=queue_name)
    app = create_app(settings)
    client = redis.Redis.from_url(redis_url)
    ledger = Ledger(client, queue_name)
    old = datetime.now(UTC) - timedelta(days=10)

    def ticket(tid: str, received: datetime) -> Ticket:
        return Ticket(
            source="r",
            ticket_id=tid,
            subject=f"Invoice {tid}",
            body=f"Ticket {tid} about invoices",
            received_at=received,
        )

    worker = start_worker(settings)
    list(
        publish(
            app,
            [ticket("old1", old), ticket("old2", old), ticket("new1", datetime.now(UTC))],
            queue=queue_name,
            ledger=ledger,
        )
    )
    wait_for(lambda: n_rows(database_url, db.DecisionRow) == 3, 120, "3 decisions")
    worker.stop()

    claim = f"triage:retention:{queue_name}"
    try:
        kept = make_settings(
            database_url=database_url, queue=queue_name, retention_days=5, ledger_sweep_s=1
        )
        start_worker(kept)
        wait_for(lambda: n_rows(database_url, PurgeRunRow) >= 1, 60, "the retention run")
        # The day is claimed: tickets that grow old later wait for the next day's run.
        list(publish(app, [ticket("old3", old)], queue=queue_name, ledger=ledger))
        wait_for(lambda: n_rows(database_url, db.DecisionRow) == 4, 120, "the 4th decision")
        time.sleep(3)  # three more periods of the purge thread
        [run] = rows(database_url, PurgeRunRow)
        assert run.reason == "retention" and run.tickets == 2 and run.decisions == 2
        assert run.requested_by == "retention (TRIAGE_RETENTION_DAYS=5)"
        assert 0 < int(client.ttl(claim)) <= 24 * 3600  # type: ignore[arg-type]
        bodies = {t.ticket_id: t.body for t in rows(database_url, db.TicketRow)}
        assert bodies["old1"] == bodies["old2"] == ""
        assert bodies["new1"] and bodies["old3"]
        assert len(decisions(database_url)) == 4
    finally:
        client.delete(claim)


@pytest.fixture
def services(tmp_path: Path, database_url: str) -> Iterator[Services]:
    embedder = LocalEmbedder()
    store = VectorStore.open(
        model_id=embedder.model_id,
        dimension=embedder.dimension,
        collection="tickets",
        path=tmp_path / "chroma",
    )
    engine = db.make_engine(database_url)
    made = Services(
        embedder=embedder,
        store=store,
        engine=engine,
        thresholds=Thresholds(0.85, 0.70),
        top_k=5,
        lexical=LexicalIndex(),
        hybrid_alpha=0.7,
        hybrid_pool=20,
        vector_cache=VectorCache(),
    )
    made.purges = PurgeWatch(engine)
    yield made
    store.close()
    engine.dispose()


def _stored_text(services: Services, key: TicketKey) -> tuple[str | None, str, bytes | None]:
    with Session(services.engine) as session:
        row = session.scalars(
            select(db.TicketRow).where(
                db.TicketRow.source == key.source, db.TicketRow.ticket_id == key.ticket_id
            )
        ).one()
        return row.subject, row.body, row.vector


@pytest.mark.parametrize("moment", ["in_section", "after_commit"])
def test_a_ticket_purged_while_its_batch_is_decided_does_not_come_back(
    services: Services, moment: str
) -> None:
    """The purge commits inside the decision section (before the batch's write) or between
    its commit and the vectors' publish: the decision is kept, the text and vector are not."""
    key = TicketKey("race", "1")
    other = TicketKey("race", "2")

    def purge_now(keys: list[TicketKey]) -> None:
        if key in keys:
            purge(services.engine, requested_by="test", keys=[key])

    setattr(services.hooks, moment, purge_now)
    results = triage_batch(
        [
            WorkItem(Ticket(source="race", ticket_id="1", subject="Secret name", body="zorblax 1")),
            WorkItem(Ticket(source="race", ticket_id="2", body="Printer on fire again")),
        ],
        services,
    )
    setattr(services.hooks, moment, None)
    assert [r.status for r in results] == ["manual", "manual"]
    assert _stored_text(services, key) == (None, "", None)
    assert _stored_text(services, other)[1] == "Printer on fire again"
    assert services.store.present([key, other]) == {other}
    assert services.lexical is not None and key not in services.lexical
    assert services.lexical.top(services.lexical.scores("zorblax"), 5) == []
    with Session(services.engine) as session:
        decided = {d.ticket_id: d for d in session.scalars(select(db.DecisionRow))}
    assert set(decided) == {"1", "2"} and decided["1"].subject is None
    # Sent again after the purge: decided before, so unchanged, and still without text.
    [again] = triage_batch(
        [WorkItem(Ticket(source="race", ticket_id="1", subject="Secret name", body="zorblax 1"))],
        services,
    )
    assert again.status == "unchanged"
    assert _stored_text(services, key) == (None, "", None)
    assert services.store.present([key]) == set()


def test_a_queued_message_is_rewritten_without_the_purged_ticket(
    make_settings: Callable[..., Settings], queue_name: str, redis_url: str
) -> None:
    """One message carrying three tickets (`triage ingest --per-message 3`), no worker: the
    purged ticket leaves the message and its headers, the other two stay queued."""
    marker = f"zq{uuid.uuid4().hex[:12]}"
    settings = make_settings(queue=queue_name)
    client = redis.Redis.from_url(redis_url)
    ledger = Ledger(client, queue_name)
    tickets = [
        Ticket(source="m", ticket_id="1", body=f"keep one {uuid.uuid4().hex}"),
        Ticket(source="m", ticket_id="2", body=f"purge me {marker}"),
        Ticket(source="m", ticket_id="3", body="keep three"),
    ]
    list(publish(create_app(settings), tickets, queue=queue_name, per_message=3, ledger=ledger))
    assert client.llen(queue_name) == 1 and _redis_with(client, marker)
    assert scrub_redis(client, [queue_name], [TicketKey("m", "2")]) == 1
    [raw] = client.lrange(queue_name, 0, -1)  # type: ignore[misc]
    envelope = json.loads(raw)
    args, _, _ = json.loads(base64.b64decode(envelope["body"]))
    assert [t["ticket_id"] for t in args[0]] == ["1", "3"]
    assert marker not in raw.decode() and _redis_with(client, marker) == []
    assert ledger.size() == 2  # the others' ledger entries stay
    # Nothing left to remove: a second scrub changes nothing.
    assert scrub_redis(client, [queue_name], [TicketKey("m", "2")]) == 0


def test_erase_on_delete_erases_a_deleted_ticket_once(database_url: str) -> None:
    from tickets.model import TicketUpdate
    from worker.purge import erase_deleted

    engine = db.make_engine(database_url)
    marker = f"erase-{uuid.uuid4().hex[:8]}"
    tickets = [
        Ticket(source="zendesk", ticket_id=str(n), subject=f"{marker} {n}", body=f"{marker} body")
        for n in (1, 2)
    ]
    with Session(engine) as session:
        rows = [db.ticket_values(t, content_hash=str(n), backfill=True, model="m")
                for n, t in enumerate(tickets)]  # fmt: skip
        db.save_batch(session, rows, [])
        session.commit()

    def deleted(ticket_id: str, status: str | None = "deleted") -> TicketUpdate:
        return TicketUpdate(source="zendesk", ticket_id=ticket_id, event="deleted", status=status)

    def texts() -> dict[str, str]:
        with Session(engine) as session:
            return {
                r.ticket_id: f"{r.subject or ''} {r.body}"
                for r in session.scalars(select(db.TicketRow))
            }

    # not applied (unknown, stale) or not a deletion: nothing erased
    assert erase_deleted(engine, deleted("1"), "stale") is None
    assert erase_deleted(engine, deleted("1", status="closed"), "applied") is None
    assert all(marker in t for t in texts().values())

    first = erase_deleted(engine, deleted("1"), "applied")
    assert first is not None and first.counts["tickets"] == 1
    after = texts()
    assert marker not in after["1"] and marker in after["2"]
    # a redelivered delete finds the tombstone: no second purge run
    assert erase_deleted(engine, deleted("1"), "unchanged") is None
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(PurgeRunRow)) == 1
        assert session.scalar(select(func.count()).select_from(PurgeRow)) == 1
    engine.dispose()


@pytest.mark.parametrize("moment", ["before", "in_section"])
def test_an_edit_of_a_purged_ticket_does_not_store_its_text_again(
    services: Services, moment: str
) -> None:
    """A helpdesk edit event of an erased ticket (its own redaction, say) arriving after
    the purge, or while the edit waits for the decision section: nothing re-embedded."""
    from tickets.model import TicketUpdate
    from worker.lifecycle import apply_update

    key = TicketKey("race", "1")
    [first] = triage_batch(
        [WorkItem(Ticket(source="race", ticket_id="1", subject="Secret name", body="zorblax"))],
        services,
    )
    assert first.status == "manual"
    if moment == "before":
        purge(services.engine, requested_by="test", keys=[key])
        assert services.purges is not None
        services.purges.catch_up(services)  # as the worker's next batch does
        assert services.store.present([key]) == set()
    else:
        # The purge commits while the edit holds the decision section, before its write.
        lock = services.lock

        @contextlib.contextmanager
        def purging_lock(**kw: Any) -> Iterator[Any]:
            with lock(**kw) as section:
                purge(services.engine, requested_by="test", keys=[key])
                yield section

        services.lock = purging_lock
    edit = TicketUpdate(
        source="race",
        ticket_id="1",
        event="ticket.updated",
        text=True,
        subject="Secret name again",
        body="zorblax and more",
    )
    applied = apply_update(
        edit,
        services,
        duplicate_tag="triage-duplicate",
        own_tags=frozenset(),
        in_flight=lambda _key: False,
        redecide=True,
    )
    assert applied.result == "purged" and not applied.reembedded
    assert _stored_text(services, key) == (None, "", None)
    if moment == "before":
        assert services.store.present([key]) == set()
    with Session(services.engine) as session:
        assert session.scalars(select(db.RedecisionRow)).all() == []
        decision = session.scalars(select(db.DecisionRow)).one()
        assert decision.subject is None and decision.redecided_at is None

"""The triage domain called directly: real embedder, real embedded Chroma, SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from tickets import db
from tickets.errors import EmbeddingRejected
from tickets.model import Ticket, TicketKey
from worker.embedding import Embedder, Vectors
from worker.embedding.local import LocalEmbedder
from worker.lexical import LexicalIndex
from worker.pipeline import SectionHooks, Services, VectorCache, WorkItem, triage_batch
from worker.routing import Thresholds
from worker.store import VectorStore


class CountingEmbedder:
    """The real embedder, with its calls counted (a spy, not a stand-in)."""

    def __init__(self, inner: Embedder, poison: str | None = None) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.dimension = inner.dimension
        self.calls: list[int] = []
        self.poison = poison

    def embed(self, texts: Sequence[str]) -> Vectors:
        self.calls.append(len(texts))
        if self.poison is not None and any(self.poison in t for t in texts):
            # What Ollama does with one bad input: the whole request fails (errgroup).
            raise EmbeddingRejected("the input length exceeds the context length")
        return self.inner.embed(texts)

    def describe(self) -> dict[str, str]:
        return self.inner.describe()

    def check(self) -> None:
        self.inner.check()


@pytest.fixture(scope="module")
def local_embedder() -> LocalEmbedder:
    return LocalEmbedder()


@pytest.fixture
def services(
    tmp_path: Path, database_url: str, local_embedder: LocalEmbedder
) -> Iterator[Services]:
    emb = CountingEmbedder(local_embedder)
    store = VectorStore.open(
        model_id=emb.model_id,
        dimension=emb.dimension,
        collection="tickets",
        path=tmp_path / "chroma",
    )
    engine = db.make_engine(database_url)
    yield Services(
        embedder=emb, store=store, engine=engine, thresholds=Thresholds(0.85, 0.70), top_k=5
    )
    store.close()
    engine.dispose()


def t(i: str, body: str, subject: str | None = None) -> Ticket:
    return Ticket(source="test", ticket_id=i, subject=subject, body=body)


def rows(services: Services) -> dict[str, db.DecisionRow]:
    with Session(services.engine) as s:
        return {d.ticket_id: d for d in s.scalars(select(db.DecisionRow))}


def count(services: Services, model: type[db.Base]) -> int:
    with Session(services.engine) as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


CRASH = "The mobile app crashes every time I try to log in with my email address."
CRASH2 = "The mobile app crashes every time I try to log in with my e-mail address!"
REFUND = "I was charged twice for my March invoice and would like a refund of the second charge."
SHIPPING = "My parcel has been stuck in transit for ten days, where is it?"


def test_batch_routes_in_order_with_one_embedding_call(services: Services) -> None:
    items = [WorkItem(t("1", CRASH)), WorkItem(t("2", REFUND)), WorkItem(t("3", CRASH2))]
    results = triage_batch(items, services)
    assert [r.status for r in results] == ["manual", "manual", "duplicate"]
    assert services.embedder.calls == [3]  # type: ignore[attr-defined]
    d = rows(services)
    assert d["3"].matched_ticket_id == "1" and d["3"].canonical_ticket_id == "1"
    assert d["3"].score is not None and d["3"].score >= 0.85
    assert d["1"].score is None and d["1"].matches == []  # no history yet
    assert d["2"].matches[0]["ticket_id"] == "1"  # compared with the earlier batch-mate
    assert d["3"].model == "local:all-MiniLM-L6-v2" and d["3"].duplicate_threshold == 0.85
    assert services.store.count() == 3


def test_a_batch_decides_its_tickets_in_arrival_order(services: Services) -> None:
    # Worker threads hand messages to the batcher in whatever order the scheduler runs them;
    # the ticket that reached the helpdesk first must still be the canonical one.
    first = t("early", CRASH).model_copy(update={"received_at": datetime(2026, 1, 1, tzinfo=UTC)})
    later = t("late", CRASH2).model_copy(update={"received_at": datetime(2026, 1, 2, tzinfo=UTC)})
    results = triage_batch([WorkItem(later), WorkItem(first)], services)
    assert [r.status for r in results] == ["duplicate", "manual"]  # one result per item, in order
    d = rows(services)
    assert d["late"].canonical_ticket_id == "early" and d["early"].matches == []


def test_a_ticket_received_weeks_ago_is_decided(services: Services) -> None:
    # A re-driven ticket keeps its first arrival time: 30 days is more milliseconds than a
    # 32-bit column holds, and PostgreSQL would refuse the row on every retry.
    old = t("old", CRASH).model_copy(update={"received_at": datetime.now(UTC) - timedelta(days=30)})
    assert [r.status for r in triage_batch([WorkItem(old)], services)] == ["manual"]
    assert rows(services)["old"].latency_ms >= 30 * 86_400_000  # type: ignore[operator]


def test_redelivery_is_idempotent_and_never_self_matched(services: Services) -> None:
    triage_batch([WorkItem(t("1", CRASH)), WorkItem(t("2", SHIPPING))], services)
    before = {
        k: (v.route, v.score, v.matched_ticket_id, v.decided_at) for k, v in rows(services).items()
    }
    again = triage_batch(
        [WorkItem(t("2", SHIPPING)), WorkItem(t("1", CRASH)), WorkItem(t("1", CRASH))], services
    )
    assert [r.status for r in again] == ["unchanged"] * 3
    after = {
        k: (v.route, v.score, v.matched_ticket_id, v.decided_at) for k, v in rows(services).items()
    }
    assert after == before
    assert count(services, db.DecisionRow) == 2 and count(services, db.TicketRow) == 2
    assert services.embedder.calls == [2]  # type: ignore[attr-defined]  # nothing re-embedded


def test_lost_vector_is_repaired_from_the_decision(services: Services, tmp_path: Path) -> None:
    # A crash between the SQL write and the vector upsert: the decision exists, the vector not.
    triage_batch([WorkItem(t("1", CRASH))], services)
    services.store._collection.delete(ids=[TicketKey("test", "1").as_id()])
    assert services.store.count() == 0
    res = triage_batch([WorkItem(t("1", CRASH))], services)
    assert res[0].status == "unchanged"
    assert services.store.count() == 1
    res = triage_batch([WorkItem(t("9", CRASH2))], services)
    assert res[0].status == "duplicate" and res[0].outcome is not None
    assert res[0].outcome.canonical == TicketKey("test", "1")


def test_backfill_stores_history_without_decisions(services: Services) -> None:
    res = triage_batch(
        [WorkItem(t("h1", CRASH), "backfill"), WorkItem(t("h2", REFUND), "backfill")], services
    )
    assert [r.status for r in res] == ["stored", "stored"]
    assert count(services, db.DecisionRow) == 0 and count(services, db.TicketRow) == 2
    res = triage_batch([WorkItem(t("n1", CRASH2))], services)
    assert res[0].status == "duplicate"
    assert rows(services)["n1"].canonical_ticket_id == "h1"
    # backfilling the same history again changes nothing and embeds nothing
    calls = len(services.embedder.calls)  # type: ignore[attr-defined]
    res = triage_batch([WorkItem(t("h1", CRASH), "backfill")], services)
    assert res[0].status == "unchanged" and len(services.embedder.calls) == calls  # type: ignore[attr-defined]


def test_poison_ticket_fails_alone(services: Services) -> None:
    services.embedder.poison = "POISON"  # type: ignore[attr-defined]
    items = [WorkItem(t("1", CRASH)), WorkItem(t("2", "POISON " * 10)), WorkItem(t("3", CRASH2))]
    res = triage_batch(items, services)
    assert [r.status for r in res] == ["manual", "failed", "duplicate"]
    assert isinstance(res[1].error, EmbeddingRejected)
    assert count(services, db.DecisionRow) == 2


def test_vectors_are_unit_length_and_similarity_is_cosine(
    services: Services, local_embedder: LocalEmbedder
) -> None:
    triage_batch([WorkItem(t("1", CRASH)), WorkItem(t("2", REFUND))], services)
    v = local_embedder.embed([CRASH2])
    hits = services.store.query(v, 2)[0]
    ref = local_embedder.embed([CRASH, REFUND])
    expected = {"1": float(ref[0] @ v[0]), "2": float(ref[1] @ v[0])}
    for h in hits:
        assert h.score == pytest.approx(expected[h.key.ticket_id], abs=1e-4)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_one_call_per_external_system_per_batch(services: Services) -> None:
    """Batching on purpose: 1 embedding call, 1 Chroma query, 1 Chroma upsert and a fixed
    handful of SQL statements for a whole batch, not per ticket; one of them inside the
    decision section's lock before its write."""
    from sqlalchemy import event

    statements: list[str] = []
    event.listen(
        services.engine, "before_cursor_execute", lambda *a: statements.append(a[2].split()[0])
    )
    calls: list[str] = []
    col = services.store._collection
    for name in ("query", "upsert", "get", "add"):
        real = getattr(col, name)

        def spy(*args: object, _real: object = real, _name: str = name, **kw: object) -> object:
            calls.append(_name)
            return _real(*args, **kw)  # type: ignore[operator]

        setattr(col, name, spy)
    triage_batch([WorkItem(t(f"b{i}", f"{CRASH} variant {i}")) for i in range(20)], services)
    assert services.embedder.calls == [20]  # type: ignore[attr-defined]
    assert sorted(calls) == ["query", "upsert"]
    # SELECT known tickets (before embedding); the snapshot: SELECT the tickets not yet in
    # the store, SELECT the newest id; the plan: SELECT known tickets again, SELECT those
    # committed since the snapshot; the section: SELECT whether that view still holds (one
    # statement), then, after taking the purge lock shared on PostgreSQL, SELECT the active
    # collection, the batch's failure rows and purged keys (one statement), INSERT tickets,
    # INSERT decisions (no DELETE: no failure row); after it, UPDATE indexed_at and SELECT
    # the purged keys again (tickets/purge.py guard, after the purge lock): 11 (13),
    # whatever the batch size.
    lock = ["SELECT"] if services.engine.dialect.name == "postgresql" else []
    assert [s.upper() for s in statements if s.upper() != "PRAGMA"] == [
        "SELECT",
        "SELECT",
        "SELECT",
        "SELECT",
        "SELECT",
        "SELECT",
        *lock,
        "SELECT",
        "INSERT",
        "INSERT",
        "UPDATE",
        *lock,
        "SELECT",
    ]


def test_the_lock_is_held_over_the_sections_statements_only(services: Services) -> None:
    """The section's connection is taken from the pool (and pinged, on PostgreSQL) before
    the lock is asked for: the lock is held over the section's own statements."""
    from sqlalchemy import event

    seen: list[str] = []
    event.listen(services.engine, "checkout", lambda *a: seen.append("checkout"))
    event.listen(services.engine, "checkin", lambda *a: seen.append("checkin"))
    event.listen(services.engine, "before_cursor_execute", lambda *a: seen.append("statement"))

    @contextlib.contextmanager
    def lock(
        *, while_waiting: Callable[[], None] | None = None, handed: object = None
    ) -> Iterator[None]:
        seen.append("enter")
        yield None
        seen.append("leave")

    triage_batch(
        [WorkItem(t(f"b{i}", f"{CRASH} variant {i}")) for i in range(4)],
        replace(services, lock=lock),
    )
    held = seen[seen.index("enter") + 1 : seen.index("leave")]
    # Statements only, then the connection back to the pool with the commit.
    assert held[0] == "statement" and "checkout" not in held, seen
    assert seen[seen.index("enter") - 1] == "checkout", seen


def test_a_batch_leaves_no_reference_cycles_of_its_own(services: Services) -> None:
    """What a batch builds (its plan, candidates, rows, the statements' key filters) is freed
    when the batch is done, not left in reference cycles to the garbage collector, whose
    full collections walk the worker's whole heap and may fall inside a decision section."""
    import gc

    services = replace(services, lexical=LexicalIndex(), hybrid_pool=3)
    triage_batch([WorkItem(t(f"h{n}", x), mode="history") for n, x in enumerate(HISTORY)], services)
    batch = [WorkItem(t(f"b{i}", f"{CRASH} variant {i}")) for i in range(8)]
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        assert all(r.error is None for r in triage_batch(batch, services))
        gc.collect()
        ours = sorted(
            {
                f"{type(o).__module__}.{type(o).__qualname__}"
                for o in gc.garbage
                if type(o).__module__.split(".")[0] in {"worker", "tickets"}
                or type(o).__name__ == "TableValuedAlias"
            }
        )
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert ours == []


def test_no_garbage_collection_runs_while_the_lock_is_held(services: Services) -> None:
    """The collector is paused once the lock is held until it is released (a full collection
    there would hold every worker's lock for its pause), and resumes after."""
    import gc

    seen: list[tuple[str, bool]] = []

    @contextlib.contextmanager
    def lock(
        *, while_waiting: Callable[[], None] | None = None, handed: object = None
    ) -> Iterator[None]:
        seen.append(("entered", gc.isenabled()))
        yield None
        seen.append(("releasing", gc.isenabled()))

    hooks = SectionHooks(in_section=lambda keys: seen.append(("in section", gc.isenabled())))
    assert gc.isenabled()
    triage_batch([WorkItem(t("b1", CRASH))], replace(services, lock=lock, hooks=hooks))
    assert seen == [("entered", True), ("in section", False), ("releasing", False)]
    assert gc.isenabled()


def test_the_collector_resumes_when_the_last_section_leaves() -> None:
    """Sections of two scopes overlap in one process: the collector resumes when both have
    left; one the process switched off stays off."""
    import gc

    from worker.pipeline import collector

    with collector.held_off() as pause:
        assert gc.isenabled()  # asking for the lock: not paused yet
        pause()
        with collector.held_off() as other:
            other()
            assert not gc.isenabled()
        assert not gc.isenabled()  # the first section still holds its lock
    assert gc.isenabled()
    gc.disable()
    try:
        with collector.held_off() as pause:
            pause()
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_unreadable_tickets_go_to_manual_and_are_never_matched(services: Services) -> None:
    from dataclasses import replace

    from config.settings import load_settings
    from worker.coverage import CoverageGuard

    # "When will my refund arrive?" vs "How is loan interest calculated?": unrelated, yet
    # all-MiniLM-L6-v2 scores them ~1.0 because both are nearly all [UNK] tokens.
    zh, unrelated = "退款什么时候到账", "贷款利息怎么计算"
    plain = triage_batch([WorkItem(t("p1", zh)), WorkItem(t("p2", unrelated))], services)
    assert plain[1].status == "duplicate", plain[1]

    guard = CoverageGuard.for_embedder(services.embedder.inner, load_settings(embedder="local"))  # type: ignore[attr-defined]
    assert guard is not None
    guarded = replace(services, coverage=guard)
    res = triage_batch(
        [
            WorkItem(t("z1", zh + "？")),
            WorkItem(t("z2", unrelated + "？")),
            WorkItem(t("e1", CRASH)),
        ],
        guarded,
    )
    assert [r.status for r in res] == ["manual", "manual", "manual"]
    d = rows(services)
    assert d["z2"].reason is not None and "unreadable" in d["z2"].reason
    assert d["z2"].unknown_ratio is not None and d["z2"].unknown_ratio > 0.3
    assert d["e1"].reason is None and d["e1"].unknown_ratio == 0.0
    # the unreadable tickets are never offered as matches, the readable history still is
    later = triage_batch([WorkItem(t("z3", zh + "。")), WorkItem(t("e2", CRASH2))], guarded)
    assert later[0].status == "manual" and later[1].status == "duplicate"
    assert rows(services)["z3"].matches and all(
        m["ticket_id"] not in ("z1", "z2") for m in rows(services)["z3"].matches
    )


def test_per_queue_thresholds_from_a_calibrated_table(services: Services) -> None:
    from dataclasses import replace

    from worker.thresholds import ThresholdTable

    table = ThresholdTable(
        default=Thresholds(0.99, 0.98), queues={"tech": Thresholds(0.80, 0.60)}, model=None
    )
    s = replace(services, thresholds=table)
    tech = [
        Ticket(source="test", ticket_id=f"t{i}", body=b, queue="tech")
        for i, b in enumerate([CRASH, CRASH2])
    ]
    refund2 = "I was charged two times for my March invoice, please refund the second charge."
    other = [
        Ticket(source="test", ticket_id=f"o{i}", body=b, queue="billing")
        for i, b in enumerate([REFUND, refund2])
    ]
    res = triage_batch([WorkItem(x) for x in tech + other], s)
    assert [r.status for r in res] == ["manual", "duplicate", "manual", "manual"]
    d = rows(services)
    assert (d["t1"].duplicate_threshold, d["t1"].suggest_threshold) == (0.80, 0.60)
    assert (d["o1"].duplicate_threshold, d["o1"].suggest_threshold) == (0.99, 0.98)
    # the billing pair would be a duplicate under tech's thresholds, not under the default
    assert d["o1"].score is not None and 0.80 <= d["o1"].score < 0.98


def test_subject_vector_is_pooled_in_the_same_call(
    services: Services, local_embedder: LocalEmbedder
) -> None:
    from worker.text import embedding_text

    a = t("s1", CRASH, subject="Login crash on Android")
    b = t("s2", REFUND)  # no subject: the text's vector alone
    triage_batch([WorkItem(a), WorkItem(b)], services)
    assert services.embedder.calls == [3]  # type: ignore[attr-defined]  # 2 texts + 1 subject, one call
    got = services.store._collection.get(ids=["test:s1", "test:s2"], include=["embeddings"])
    stored = dict(zip(got["ids"], np.asarray(got["embeddings"], dtype=np.float32), strict=True))
    text_a, subj_a, text_b = local_embedder.embed(
        [embedding_text(a), "Login crash on Android", embedding_text(b)]
    )
    mixed = 0.2 * subj_a + 0.8 * text_a
    assert float(stored["test:s1"] @ (mixed / np.linalg.norm(mixed))) > 0.9999
    assert float(stored["test:s2"] @ text_b) > 0.9999
    assert float(stored["test:s1"] @ text_a) < 0.9999  # the subject really moved it


def test_another_subject_weight_needs_a_reindex(tmp_path: Path) -> None:
    from tickets.errors import ModelMismatch

    VectorStore.open(
        model_id="m", dimension=4, collection="tickets", path=tmp_path, recipe="subject_weight=0.2"
    ).close()
    with pytest.raises(ModelMismatch, match="recipe"):
        VectorStore.open(
            model_id="m",
            dimension=4,
            collection="tickets",
            path=tmp_path,
            recipe="subject_weight=0",
        )


def test_malformed_html_does_not_fail_the_batch(services: Services) -> None:
    # html.parser raises AssertionError on "<![foo[": it must not poison the batch-mates.
    odd = t("h1", "<p>The export page</p><![foo[ crashes with a blank screen")
    res = triage_batch([WorkItem(t("1", CRASH)), WorkItem(odd), WorkItem(t("3", CRASH2))], services)
    assert [r.status for r in res] == ["manual", "manual", "duplicate"]


def test_vector_cache_spares_the_model_a_text_it_has_embedded(services: Services) -> None:
    services.vector_cache = VectorCache(max_entries=2)
    triage_batch([WorkItem(t("1", CRASH, subject="Login")), WorkItem(t("2", REFUND))], services)
    # The same subject and body under another key (a helpdesk sending it twice): no call.
    [again] = triage_batch([WorkItem(t("3", CRASH, subject="Login"))], services)
    assert services.embedder.calls == [3]  # type: ignore[attr-defined]  # 2 texts + 1 subject
    assert again.status == "duplicate" and again.outcome is not None
    assert again.outcome.score == pytest.approx(1.0, abs=1e-5)
    # Another subject is another vector; the cache holds 2, least recently used out.
    triage_batch([WorkItem(t("4", CRASH, subject="Other")), WorkItem(t("5", SHIPPING))], services)
    assert services.embedder.calls == [3, 3]  # type: ignore[attr-defined]
    triage_batch([WorkItem(t("6", REFUND))], services)  # evicted: embedded again
    assert services.embedder.calls == [3, 3, 1]  # type: ignore[attr-defined]
    assert services.vector_cache.hits == 1


# --- the decision section: snapshot, catch-up, publish ------------------------------------


def _ticket_row(services: Services, ticket_id: str) -> db.TicketRow:
    with Session(services.engine) as s:
        row = s.scalars(select(db.TicketRow).where(db.TicketRow.ticket_id == ticket_id)).one()
        return row


class Interrupted(Exception):
    """A worker's end between its commit and its vector upsert, here in-process."""


def _interrupt_after_commit(keys: list[TicketKey]) -> None:
    raise Interrupted(keys)


def test_vectors_that_never_reached_the_store_are_caught_up_then_restored(
    services: Services,
) -> None:
    services.hooks.after_commit = _interrupt_after_commit
    with pytest.raises(Interrupted):
        triage_batch([WorkItem(t("1", CRASH))], services)
    row = _ticket_row(services, "1")
    assert rows(services)["1"].route == "manual" and services.store.count() == 0
    assert row.vector is not None and row.indexed_at is None and row.readable is True

    services.hooks.after_commit = None
    services.repair_after_s = 3600  # not yet: the catch-up alone must find it
    [res] = triage_batch([WorkItem(t("9", CRASH2))], services)
    assert res.status == "duplicate" and res.outcome is not None
    assert res.outcome.canonical == TicketKey("test", "1")
    assert services.store.present([TicketKey("test", "1")]) == set()
    calls = len(services.embedder.calls)  # type: ignore[attr-defined]

    services.repair_after_s = 0  # the next batch re-stores it from SQL, not embedding it
    triage_batch([WorkItem(t("5", SHIPPING))], services)
    assert services.store.count() == 3
    assert _ticket_row(services, "1").indexed_at is not None
    assert len(services.embedder.calls) == calls + 1  # type: ignore[attr-defined]  # "5" only
    stored = services.store.fetch([TicketKey("test", "1")])[TicketKey("test", "1")][0]
    assert stored.tobytes() == row.vector


def test_history_routed_later_is_written_again_under_a_new_id(services: Services) -> None:
    triage_batch([WorkItem(t("a0", CRASH))], services)
    triage_batch([WorkItem(t("h1", REFUND), "backfill")], services)
    first_id = _ticket_row(services, "h1").id
    # h1 routed now (another text: its vector is the new one), and the worker ends before
    # its vector reaches the store, which still holds h1 as history with REFUND's vector.
    services.hooks.after_commit = _interrupt_after_commit
    with pytest.raises(Interrupted):
        triage_batch([WorkItem(t("h1", CRASH2))], services)
    services.hooks.after_commit = None
    routed = _ticket_row(services, "h1")
    assert routed.id > first_id and routed.body == REFUND  # the first version's text stands
    assert rows(services)["h1"].canonical_ticket_id == "a0"
    # A ticket decided next reads h1 from SQL: its new vector, its decision's canonical.
    services.repair_after_s = 3600
    [res] = triage_batch([WorkItem(t("n", CRASH2))], services)
    assert res.outcome is not None and res.outcome.best is not None
    assert res.outcome.best.key == TicketKey("test", "h1")
    assert res.outcome.best.score == pytest.approx(1.0, abs=1e-5)
    assert res.status == "duplicate" and res.outcome.canonical == TicketKey("test", "a0")


def test_a_store_that_lost_a_vector_gets_it_back_from_sql(services: Services) -> None:
    triage_batch([WorkItem(t("1", CRASH))], services)
    services.store._collection.delete(ids=[TicketKey("test", "1").as_id()])
    calls = len(services.embedder.calls)  # type: ignore[attr-defined]
    [res] = triage_batch([WorkItem(t("1", CRASH))], services)  # the redelivery
    assert res.status == "unchanged" and services.store.count() == 1
    assert len(services.embedder.calls) == calls  # type: ignore[attr-defined]  # not embedded


def test_rows_from_before_vectors_were_kept_count_as_stored(services: Services) -> None:
    triage_batch([WorkItem(t("1", CRASH))], services)
    with Session(services.engine) as s:  # as migrated: no kept vector, never marked
        s.execute(update(db.TicketRow).values(vector=None, indexed_at=None, readable=None))
        s.commit()
    # Not caught up (it is in the store), and still matched through the store.
    [res] = triage_batch([WorkItem(t("2", CRASH2))], services)
    assert res.status == "duplicate" and services.store.count() == 2
    # Lost from the store and redelivered: embedded again, and its vector kept from now on.
    services.store._collection.delete(ids=[TicketKey("test", "1").as_id()])
    [res] = triage_batch([WorkItem(t("1", CRASH))], services)
    assert res.status == "unchanged" and services.store.count() == 2
    row = _ticket_row(services, "1")
    assert row.vector is not None and row.indexed_at is not None


def test_each_batch_records_its_section_time(services: Services) -> None:
    from worker.pipeline import section_times, section_waits

    before = len(section_times())
    triage_batch([WorkItem(t("1", CRASH)), WorkItem(t("2", REFUND))], services)
    assert len(section_times()) == before + 1 and len(section_waits()) >= 1
    assert 0 < section_times()[-1] < 60


def _count_routes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """Each routing of a batch (its plan, and again in the section), as its ticket ids."""
    from worker import pipeline

    routed: list[tuple[str, ...]] = []
    route = pipeline._route

    def counted(batch: Any, part: list[int], *args: Any) -> Any:
        routed.append(tuple(batch.items[i].ticket.ticket_id for i in part))
        return route(batch, part, *args)

    monkeypatch.setattr(pipeline, "_route", counted)
    return routed


def test_a_batch_is_routed_again_only_if_another_commits_after_its_snapshot(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker import pipeline

    routed = _count_routes(monkeypatch)
    # Nothing committed meanwhile: routed once, outside the lock, and written as planned.
    results = triage_batch([WorkItem(t("1", REFUND)), WorkItem(t("2", SHIPPING))], services)
    assert [r.status for r in results] == ["manual", "manual"]
    assert routed == [("1", "2")]

    # Another worker commits a twin after this batch's snapshot (and its plan): the view no
    # longer holds inside the lock, so the batch is routed again, and finds the twin.
    other = replace(services, hooks=SectionHooks(), local_lock=threading.Lock())

    def another_worker_decides(keys: list[TicketKey]) -> None:
        services.hooks = SectionHooks()
        assert triage_batch([WorkItem(t("3", CRASH2))], other)[0].status == "manual"

    services.hooks = SectionHooks(after_snapshot=another_worker_decides)
    routed.clear()
    [res] = triage_batch([WorkItem(t("4", CRASH))], services)
    assert routed == [("4",), ("3",), ("4",)]
    assert res.status == "duplicate" and res.outcome is not None
    assert res.outcome.canonical == TicketKey("test", "3")
    assert {r.ticket_id: r.canonical_ticket_id for r in rows(services).values()}["4"] == "3"

    # Only the ticket committed meanwhile is read again (the view's other rows are the
    # plan's), unless the batch's own key was stored meanwhile: then the whole view is.
    reads: list[tuple[str, ...]] = []
    read_view = pipeline._read_view

    def counted_reads(session: Any, keys: list[TicketKey], *args: Any) -> Any:
        reads.append(tuple(k.ticket_id for k in keys))
        return read_view(session, keys, *args)

    monkeypatch.setattr(pipeline, "_read_view", counted_reads)

    def another_worker_commits(ticket_id: str) -> Callable[[list[TicketKey]], None]:
        def commit(keys: list[TicketKey]) -> None:
            services.hooks = SectionHooks()
            assert triage_batch([WorkItem(t(ticket_id, CRASH2))], other)[0].status == "duplicate"

        return commit

    services.hooks = SectionHooks(after_snapshot=another_worker_commits("7"))
    [res] = triage_batch([WorkItem(t("5", CRASH))], services)
    # 5's plan, the other worker's plan for 7, and no second read of 5's view
    assert res.status == "duplicate" and reads == [("5",), ("7",)]
    services.hooks = SectionHooks(after_snapshot=another_worker_commits("6"))
    reads.clear()
    # A redelivery of 6 racing its original: decided once, by the other worker.
    [res] = triage_batch([WorkItem(t("6", CRASH2))], services)
    # this batch's plan, the other worker's, then this batch's whole view again
    assert res.status == "unchanged" and reads == [("6",), ("6",), ("6",)]
    decided = [r for r in rows(services).values() if r.ticket_id == "6"]
    assert len(decided) == 1


def test_the_tickets_committed_meanwhile_come_with_the_views_check(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inside the lock, a section whose view no longer holds reads the tickets committed
    since with the view's check itself: as many statements as a section whose view held."""
    from sqlalchemy import event

    held: list[list[str]] = []

    @contextlib.contextmanager
    def lock(
        *, while_waiting: Callable[[], None] | None = None, handed: object = None
    ) -> Iterator[None]:
        held.append([])
        yield None
        held.append([])  # statements after the section are not its own

    def statement(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        if held:
            held[-1].append(sql)

    event.listen(services.engine, "before_cursor_execute", statement)
    mine = replace(services, lock=lock)
    other = replace(services, hooks=SectionHooks(), local_lock=threading.Lock())
    # Nothing committed meanwhile: the plan's view holds.
    assert triage_batch([WorkItem(t("1", REFUND))], mine)[0].status == "manual"
    quiet = held[-2]

    def another_worker_decides(keys: list[TicketKey]) -> None:
        mine.hooks = SectionHooks()
        assert triage_batch([WorkItem(t("2", CRASH2))], other)[0].status == "manual"

    mine.hooks = SectionHooks(after_snapshot=another_worker_decides)
    held.clear()
    [res] = triage_batch([WorkItem(t("3", CRASH))], mine)
    # The twin committed after the plan was caught up with: one statement read it.
    assert res.outcome is not None and res.outcome.canonical == TicketKey("test", "2")
    assert len(held[-2]) == len(quiet), (held[-2], quiet)


HISTORY = [
    "How do I change the billing address on my account?",
    "The invoice PDF is blank when I download it.",
    "Please cancel my subscription at the end of the month.",
    "I cannot reset my password, the reset email never arrives.",
    "The export to CSV leaves out the last column.",
    "Your courier left my parcel at the wrong address.",
    "Two-factor codes from the authenticator app are rejected.",
    "The dashboard takes a minute to load every morning.",
]


@pytest.mark.parametrize("hybrid", [False, True])
def test_a_plan_stands_when_what_was_committed_meanwhile_enters_no_candidates(
    services: Services, monkeypatch: pytest.MonkeyPatch, hybrid: bool
) -> None:

    # Short candidate lists (dense depth 6, BM25 pool 3), filled by the history: a ticket
    # committed later changes the routing only if it ranks above their last.
    services = replace(services, hybrid_pool=3, lexical=LexicalIndex() if hybrid else None)
    history = [WorkItem(t(f"h{n}", body), mode="history") for n, body in enumerate(HISTORY)]
    triage_batch(history, services)
    routed = _count_routes(monkeypatch)
    other = replace(services, hooks=SectionHooks(), local_lock=threading.Lock())

    def another_worker_commits(ticket: Ticket) -> Callable[[list[TicketKey]], None]:
        def commit(keys: list[TicketKey]) -> None:
            services.hooks = SectionHooks()
            assert triage_batch([WorkItem(ticket)], other)[0].status == "manual"

        return commit

    # Nothing like the batch: the view changed, yet the plan is written as routed.
    services.hooks = SectionHooks(after_snapshot=another_worker_commits(t("z", "Zebra quokka!")))
    results = triage_batch([WorkItem(t("1", CRASH)), WorkItem(t("2", REFUND))], services)
    assert routed == [("1", "2"), ("z",)]
    assert [r.status for r in results] == ["manual", "manual"]
    d = rows(services)
    assert d["1"].matches and d["2"].matches
    assert "z" not in {m["ticket_id"] for r in ("1", "2") for m in d[r].matches}

    # A twin of the batch's ticket committed meanwhile: routed again inside the section.
    routed.clear()
    twin = t("3", "The printer driver fails to install on Windows 11 with error 0x80070005.")
    services.hooks = SectionHooks(after_snapshot=another_worker_commits(twin))
    [res] = triage_batch(
        [WorkItem(t("4", "Printer driver install fails on Windows 11: error 0x80070005"))],
        services,
    )
    assert routed == [("4",), ("3",), ("4",)]
    assert res.status == "duplicate" and res.outcome is not None
    assert res.outcome.canonical == TicketKey("test", "3")


def test_a_batch_waiting_for_the_lock_catches_up_before_its_section(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another worker commits while the batch waits for the lock (worker/decision_lock.py
    calls ``while_waiting`` each time a holder has left): the plan is brought up to date
    then, outside the lock, and the section routes nothing again."""
    services = replace(services, hybrid_pool=3, lexical=LexicalIndex())
    history = [WorkItem(t(f"h{n}", body), mode="history") for n, body in enumerate(HISTORY)]
    triage_batch(history, services)
    routed = _count_routes(monkeypatch)
    other = replace(services, hooks=SectionHooks(), local_lock=threading.Lock())
    twin = t("3", "The printer driver fails to install on Windows 11 with error 0x80070005.")

    @contextlib.contextmanager
    def lock(
        *, while_waiting: Callable[[], None] | None = None, handed: object = None
    ) -> Iterator[None]:
        # Another holder commits its batch and leaves while this one waits.
        assert triage_batch([WorkItem(twin)], other)[0].status == "manual"
        assert while_waiting is not None
        while_waiting()
        routed.append(("entered",))
        yield None

    [res] = triage_batch(
        [WorkItem(t("4", "Printer driver install fails on Windows 11: error 0x80070005"))],
        replace(services, lock=lock),
    )
    assert routed == [("4",), ("3",), ("4",), ("entered",)]
    assert res.status == "duplicate" and res.outcome is not None
    assert res.outcome.canonical == TicketKey("test", "3")
    # The row written says so.
    d = rows(services)
    assert d["4"].matched_ticket_id == "3" and d["4"].route == "duplicate"


REACH_TEXT = "I cannot log in: the password reset email never arrives in my inbox."


def _entrant(n: int, toward: np.ndarray, cosine: float) -> db.StoredTicket:
    """A ticket committed after a plan's view, its unit vector at ``cosine`` to ``toward``."""
    from worker import pipeline

    rng = np.random.default_rng(n)
    away = rng.standard_normal(toward.shape[0]).astype(np.float32)
    away -= float(away @ toward) * toward
    away /= np.linalg.norm(away)
    vector = cosine * toward + np.sqrt(1 - cosine**2) * away
    return db.StoredTicket(
        id=10_000 + n,
        key=TicketKey("other", f"e{n}"),
        subject=None,
        body=f"entrant {n}",
        body_format="text",
        queue=None,
        vector=pipeline.encode_vector(vector.astype(np.float32)),
        readable=True,
        route="manual",
        canonical=TicketKey("other", f"e{n}"),
        stored_at=datetime.now(UTC),
    )


@pytest.fixture
def planned(services: Services) -> tuple[Services, Any, Any, Any, np.ndarray]:
    """A batch of one planned, dense ranking only, against eight stored tickets: its dense
    list is the ``top_k + 1`` nearest, its ranking reads the ``top_k`` best."""
    from worker import pipeline
    from worker.pipeline import prepare_batch

    services = replace(services, lexical=None)
    triage_batch([WorkItem(t(f"h{n}", x), mode="history") for n, x in enumerate(HISTORY)], services)
    batch = prepare_batch([WorkItem(t("b1", REACH_TEXT))], services)
    snapshot = pipeline._snapshot(batch, [0], None, services)
    plan = pipeline._plan(batch, [0], snapshot, services)
    return services, batch, snapshot, plan, batch.vectors[0]


def _reached_by(planned: tuple[Any, ...], new: list[db.StoredTicket], routed: Any = None) -> Any:
    """worker/pipeline.py ``_reached``: which tickets of the plan ``new`` (committed after its
    view) could change."""
    from worker import pipeline

    services, batch, snapshot, plan, _ = planned
    view = pipeline.View(plan.view.known, [*plan.view.since, *new], plan.view.caught)
    return pipeline._reached(batch, routed or plan.routed, view, new, snapshot, services)


def test_one_entrant_below_the_ranking_changes_nothing_two_do(planned: tuple[Any, ...]) -> None:
    from worker import pipeline

    *_, plan, toward = planned
    reach = plan.routed.reach[0]
    assert reach.bar is not None and reach.last not in reach.bar.ranked
    # Between the last of the dense list and the last the ranking read: listed, not ranked.
    assert reach.dense < reach.bar.dense, reach
    between = (reach.dense + reach.bar.dense) / 2
    assert _reached_by(planned, [_entrant(1, toward, between)]) == set()
    # ... rightly: routed whole with it, the ticket ranks the same matches.
    services, batch, snapshot, *_ = planned
    view = pipeline.View(plan.view.known, [_entrant(1, toward, between)], {})
    whole = pipeline._route(batch, [0], snapshot, view, services).written.results[0].outcome
    kept = plan.routed.written.results[0].outcome
    assert [m.key for m in whole.matches] == [m.key for m in kept.matches]
    assert (whole.route, whole.canonical) == (kept.route, kept.canonical)
    # Two such entrants push two out of the list, the second a ticket the ranking may read.
    assert _reached_by(planned, [_entrant(1, toward, between), _entrant(2, toward, between)]) == {0}
    # One entrant above what the ranking read changes it.
    assert _reached_by(planned, [_entrant(3, toward, (reach.bar.dense + 1) / 2)]) == {0}
    # Below the dense list: not even listed.
    assert _reached_by(planned, [_entrant(4, toward, reach.dense - 0.05)]) == set()


def test_an_entrant_that_pushes_out_a_ranked_candidate_changes_the_routing(
    planned: tuple[Any, ...],
) -> None:
    *_, plan, toward = planned
    reach = plan.routed.reach[0]
    between = (reach.dense + reach.bar.dense) / 2
    assert _reached_by(planned, [_entrant(1, toward, between)]) == set()
    # The same entrant, when the ticket it pushes out of the list is one the ranking read.
    ranked = next(iter(reach.bar.ranked))
    routed = plan.routed
    routed.__dict__["reach"] = {0: replace(reach, last=ranked)}
    assert _reached_by(planned, [_entrant(1, toward, between)], routed) == {0}


def _corpus(name: str) -> tuple[list[str], list[str], list[str]]:
    """Stored history, this worker's tickets, another worker's: helpdesk questions with the
    other worker holding their paraphrases (en_pairs), or Hadoop bug reports."""
    import csv

    quality = Path(__file__).parent / "fixtures" / "quality"
    if name == "pairs":
        with (quality / "en_pairs.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
        firsts, seconds = [r["sentence1"] for r in rows], [r["sentence2"] for r in rows]
        return firsts[:14], firsts[14:], seconds[14:]
    with (quality / "hadoop_bugs.csv").open(newline="") as f:
        texts = [f"{r['Summary']}\n{r['Description']}"[:1500] for r in csv.DictReader(f)]
    third = len(texts) // 3
    return texts[:third], texts[third::2], texts[third + 1 :: 2]


def _comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {k: v for k, v in r.items() if k not in ("decided_at", "latency_ms", "stored_at")}
        for r in rows
    ]


@pytest.mark.parametrize("corpus", ["pairs", "bugs"])
@pytest.mark.parametrize("hybrid", [False, True])
def test_a_plan_kept_or_partly_routed_again_equals_the_batch_routed_whole(
    services: Services, monkeypatch: pytest.MonkeyPatch, hybrid: bool, corpus: str
) -> None:
    from worker import pipeline

    pipeline_listed = pipeline.Listed
    # Short lists (top 2, dense depth 4, BM25 pool 3) over real texts, so that tickets
    # committed meanwhile often enter some ticket's candidates and often do not. Each time
    # a section has read what was committed meanwhile, the batch is also routed whole on the
    # view read whole: the rows must be the same.
    services = replace(services, top_k=2, hybrid_pool=3, lexical=LexicalIndex() if hybrid else None)
    stored, ours, others = _corpus(corpus)
    triage_batch([WorkItem(t(f"h{n}", x), mode="history") for n, x in enumerate(stored)], services)
    mine = [(f"b{n}", x) for n, x in enumerate(ours)]
    theirs = [(f"o{n}", x) for n, x in enumerate(others)]
    real_reached, real_route = pipeline._reached, pipeline._route
    seen = {"kept": 0, "partly": 0, "rerouted": 0, "listed_fewer": 0}
    # Each ticket whose candidates are worked out (pipeline.Listed), counted.
    listed: list[Any] = []
    monkeypatch.setattr(
        pipeline, "Listed", lambda *a: listed.append(a) or pipeline_listed(*a), raising=True
    )

    def checked(batch: Any, routed: Any, *args: Any) -> Any:
        reached = real_reached(batch, routed, *args)
        snapshot, svc = args[-2:]
        part = list(range(len(batch.items)))
        keys = [item.ticket.key for item in batch.items]
        view = pipeline.with_session(
            lambda s: pipeline._read_view(s, keys, snapshot, None), svc.engine
        )
        whole = real_route(batch, part, snapshot, view, svc)
        if reached is not None:
            listed.clear()
            mine = (
                real_route(batch, part, snapshot, view, svc, routed, reached) if reached else routed
            )
            assert _comparable(mine.decision_rows) == _comparable(whole.decision_rows)
            assert _comparable(mine.ticket_rows) == _comparable(whole.ticket_rows)
            seen["partly" if reached else "kept"] += 1
            # Routed again from the plan: only the tickets decided again are listed.
            seen["listed_fewer"] += bool(reached) and len(listed) < len(part)
        else:
            seen["rerouted"] += 1
        return reached

    monkeypatch.setattr(pipeline, "_reached", checked)
    other = replace(services, hooks=SectionHooks(), local_lock=threading.Lock())

    def another_worker_commits(keys: list[TicketKey]) -> None:
        services.hooks = SectionHooks()
        some = [theirs.pop(0) for _ in range(min(3, len(theirs)))]
        triage_batch([WorkItem(t(i, x)) for i, x in some], other)

    rounds = 0
    while mine and theirs:
        services.hooks = SectionHooks(after_snapshot=another_worker_commits)
        batch = [WorkItem(t(i, x)) for i, x in mine[:5]]
        del mine[:5]
        assert all(r.error is None for r in triage_batch(batch, services))
        rounds += 1
    assert seen["kept"] + seen["partly"] == rounds, seen
    assert seen["partly"] >= 1, seen
    assert seen["listed_fewer"] >= 1, seen


def _q(i: str, body: str, queue: str | None) -> Ticket:
    return Ticket(source="test", ticket_id=i, body=body, queue=queue)


@pytest.mark.parametrize("hybrid", [False, True])
def test_a_queue_scope_matches_within_the_queue_only(services: Services, hybrid: bool) -> None:
    from dataclasses import replace

    from worker.lexical import LexicalIndex
    from worker.pipeline import scope_lock_name

    names: list[str] = []

    def scope_lock(name: str, **_: Any) -> Any:
        names.append(name)
        return contextlib.nullcontext()

    scoped = replace(
        services,
        match_scope="queue",
        scope_lock=scope_lock,
        lexical=LexicalIndex(scope_field="queue") if hybrid else None,
    )
    res = triage_batch(
        [
            WorkItem(_q("a1", CRASH, "alpha")),
            WorkItem(_q("b1", CRASH2, "beta")),
            WorkItem(_q("a2", CRASH2, "alpha")),
            WorkItem(_q("n1", CRASH, None)),
        ],
        scoped,
    )
    assert [r.status for r in res] == ["manual", "manual", "duplicate", "manual"]
    # One section per scope, in order of first appearance, each under its own lock.
    assert names == [scope_lock_name("queue", q) for q in ("alpha", "beta", None)]
    assert len(set(names)) == 3
    d = rows(services)
    assert d["a2"].matched_ticket_id == "a1"
    for row in d.values():  # never a candidate from another queue, dense or lexical
        queue = {"a": "alpha", "b": "beta", "n": None}[row.ticket_id[0]]
        assert all(m["ticket_id"][0] == row.ticket_id[0] for m in row.matches), (queue, row)
    [later] = triage_batch([WorkItem(_q("b2", CRASH, "beta"))], scoped)
    assert later.outcome is not None and later.outcome.canonical == TicketKey("test", "b1")
    assert {m.key.ticket_id for m in later.outcome.matches} == {"b1"}


def _set_status(services: Services, ticket_id: str, status: str) -> None:
    with Session(services.engine) as s:
        s.execute(
            update(db.TicketRow).where(db.TicketRow.ticket_id == ticket_id).values(status=status)
        )
        s.commit()


def test_match_statuses_leave_out_tickets_by_status(services: Services) -> None:
    triage_batch([WorkItem(t("1", CRASH)), WorkItem(t("2", REFUND))], services)
    # TRIAGE_MATCH_STATUSES' default: all but deleted.
    services.match_statuses = ("open", "pending", "solved", "closed")
    _set_status(services, "1", "closed")
    assert triage_batch([WorkItem(t("3", CRASH2))], services)[0].status == "duplicate"
    _set_status(services, "1", "deleted")
    _set_status(services, "3", "deleted")
    (r,) = triage_batch([WorkItem(t("4", CRASH2))], services)
    assert r.status == "manual"
    assert {m["ticket_id"] for m in rows(services)["4"].matches}.isdisjoint({"1", "3"})

    # A ticket decided after the snapshot (caught up in the section) brings its status
    # with its row: deleted meanwhile, it is left out.
    for i in ("1", "3", "4"):
        _set_status(services, i, "open")

    def decide_and_delete_a_twin(keys: list[TicketKey]) -> None:
        services.hooks = SectionHooks()
        with services.engine.begin() as conn:  # another worker's ticket, committed
            conn.execute(
                update(db.TicketRow)
                .where(db.TicketRow.ticket_id.in_(["1", "3", "4"]))
                .values(id=db.TicketRow.id + 1000, status="deleted")
            )

    services.hooks = SectionHooks(after_snapshot=decide_and_delete_a_twin)
    (r,) = triage_batch([WorkItem(t("5", CRASH2))], services)
    assert r.status == "manual"
    assert {m["ticket_id"] for m in rows(services)["5"].matches}.isdisjoint({"1", "3", "4"})

    # Hybrid ranking: the BM25 candidates are filtered too.
    services.hooks = SectionHooks()
    services.lexical = LexicalIndex()
    services.match_statuses = ("open",)
    for i in ("1", "3", "4", "5"):
        _set_status(services, i, "solved")
    (r,) = triage_batch([WorkItem(t("6", CRASH2))], services)
    assert r.status == "manual"
    assert {m["ticket_id"] for m in rows(services)["6"].matches} <= {"2"}
    _set_status(services, "6", "solved")
    _set_status(services, "1", "open")
    assert triage_batch([WorkItem(t("7", CRASH2))], services)[0].status == "duplicate"
    assert rows(services)["7"].matched_ticket_id == "1"

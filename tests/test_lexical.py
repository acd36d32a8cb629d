"""Hybrid ranking: the incremental BM25 index, the fusion, and the worker's path through them."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from quality.bm25 import BM25Index
from tickets import db
from tickets.model import Ticket, TicketKey
from worker.embedding.local import LocalEmbedder
from worker.hybrid import fuse, pool_mask
from worker.lexical import LexicalIndex, build_index, tokenize
from worker.pipeline import ItemResult, Services, WorkItem, triage_batch
from worker.routing import Thresholds, decide
from worker.store import Neighbour, VectorStore

WORDS = [
    *[
        "app",
        "crash",
        "login",
        "error",
        "timeout",
        "refund",
        "invoice",
        "charged",
        "twice",
        "parcel",
        "transit",
    ],
    *[
        "NullPointerException",
        "FSNamesystem",
        "HADOOP-1234",
        "datanode",
        "用户",
        "订单",
        "未发货",
        "the",
        "a",
        "of",
    ],
]


def random_texts(rng: random.Random, n: int) -> list[str]:
    return [" ".join(rng.choices(WORDS, k=rng.randint(0, 25))) for _ in range(n)]


def test_incremental_index_scores_like_bm25s() -> None:
    rng = random.Random(7)
    texts = random_texts(rng, 60)  # includes empty texts
    ours = build_index(texts)
    reference = BM25Index(texts)
    for query in [*random_texts(rng, 30), "crash crash crash", "订单", "unknownword"]:
        np.testing.assert_allclose(
            ours.scores(query), reference.scores(query), rtol=1e-5, atol=1e-6
        )


def test_a_key_is_indexed_once() -> None:
    index = LexicalIndex()
    key = TicketKey("zendesk", "1")
    assert index.add(key, "printer on fire")
    assert not index.add(key, "printer on fire")  # a redelivery
    assert len(index) == 1 and key in index
    assert index.top(index.scores("printer"), 5) == [0]
    assert index.top(index.scores("printer"), 5, exclude=key) == []
    assert index.top(index.scores("nothing shared"), 5) == []  # only positive scores


def test_tokens_split_cjk_per_character_and_keep_identifiers() -> None:
    assert tokenize("HADOOP-1234: NPE in FSNamesystem") == [
        "hadoop",
        "1234",
        "npe",
        "in",
        "fsnamesystem",
    ]
    assert tokenize("用户投诉") == ["用", "户", "投", "诉"]
    # The measured alternatives: overlapping bigrams (a lone character stays itself), both.
    assert tokenize("APP闪退了吗 v2 好", "bigram") == ["app", "闪退", "退了", "了吗", "v2", "好"]
    assert tokenize("闪退了", "both") == ["闪", "退", "了", "闪退", "退了"]
    # NFKC: full-width letters, digits and punctuation read as their ASCII forms.
    assert tokenize("ＡＰＰ登录１２３") == ["app", "登", "录", "123"]
    assert tokenize("ＡＰＰ", nfkc=False) == ["ａｐｐ"]


def test_seed_twin_scores_above_an_unrelated_ticket() -> None:
    query, twin, other = (
        "用户说安卓APP点登录就崩溃",
        "用户反映APP登录后闪退",
        "订单支付成功但未扣款",
    )
    index = LexicalIndex()
    index.add(TicketKey("s", "twin"), twin)
    index.add(TicketKey("s", "other"), other)
    scores = index.scores(query)
    assert scores[0] > 0 and scores[1] == 0
    # Full-width input (common from Chinese input methods) finds the same ticket.
    assert index.scores("用户说安卓ＡＰＰ点登录就崩溃")[0] == pytest.approx(scores[0])


def test_refresh_reads_what_any_worker_stored(database_url: str) -> None:
    engine = db.make_engine(database_url)
    now = datetime.now(UTC)

    def store(*ids: str) -> None:
        rows = [
            db.ticket_values(
                Ticket(
                    source="jira",
                    ticket_id=i,
                    subject=f"ticket {i}",
                    body=f"body of {i} datanode",
                    received_at=now,
                ),
                content_hash=i,
                backfill=True,
                model="m",
            )
            for i in ids
        ]
        with Session(engine) as session:
            db.save_batch(session, rows, [])
            session.commit()

    index = LexicalIndex()
    assert index.refresh(engine) == 0
    store("1", "2")
    assert index.refresh(engine) == 2
    index.add(TicketKey("jira", "3"), "added by this worker before its commit")
    store("3", "4")
    assert index.refresh(engine) == 1  # "3" is already indexed: counted once
    assert index.refresh(engine) == 0
    assert [k.ticket_id for k in index.keys] == ["1", "2", "3", "4"]
    engine.dispose()


def test_refresh_prepares_a_stored_body_as_the_worker_did(database_url: str) -> None:
    # A body intake converted from HTML is stored as text: its "<div>" is a word to match,
    # not a tag to drop again; a body that may hold HTML is converted as before.
    engine = db.make_engine(database_url)
    tickets = [
        Ticket(
            source="freshdesk", ticket_id="1", body="Title shows <div> tags", body_format="text"
        ),
        Ticket(source="api", ticket_id="2", body="<div>Printer jammed</div>"),
    ]
    with Session(engine) as session:
        rows = [db.ticket_values(t, content_hash="h", backfill=True, model="m") for t in tickets]
        db.save_batch(session, rows, [])
        session.commit()
    index = LexicalIndex()
    assert index.refresh(engine) == 2
    assert index.scores("div").tolist()[0] > 0 and index.scores("div").tolist()[1] == 0
    assert index.scores("printer").tolist()[1] > 0
    engine.dispose()


def test_fusion_pool_and_alpha() -> None:
    dense = np.array([[0.9, 0.8, 0.7, 0.1, -np.inf]], dtype=np.float32)
    lexical = np.array([[0.0, 1.0, 0.0, 9.0, 5.0]], dtype=np.float32)
    # Pool of 1: the best by cosine (0) and the best by BM25 (3); never the non-candidate 4.
    assert pool_mask(dense, lexical, 1).tolist() == [[True, False, False, True, False]]
    fused = fuse(dense, lexical, 0.7, pool=1)[0]
    assert np.isneginf(fused[[1, 2, 4]]).all()
    assert fused[0] == pytest.approx(0.7) and fused[3] == pytest.approx(0.3)
    # Without a pool every candidate is ranked; alpha 1 is the dense order.
    assert np.argsort(-fuse(dense, lexical, 1.0)[0])[:4].tolist() == [0, 1, 2, 3]
    assert np.argmax(fuse(dense, lexical, 0.2)[0]) == 3


def test_decide_ranks_by_fusion_and_merges_only_into_the_top_ranked() -> None:
    me = TicketKey("t", "new")
    a, b = TicketKey("t", "a"), TicketKey("t", "b")
    c = TicketKey("t", "c")
    stored = [[Neighbour(k, score, k, "manual") for k, score in ((a, 0.86), (b, 0.84), (c, 0.3))]]
    vectors = np.ones((1, 2), dtype=np.float32) / np.sqrt(2)
    kwargs = dict(decide_mask=[True], thresholds=Thresholds(0.85, 0.7), top_k=2)
    dense_only = decide([me], vectors, stored, **kwargs)[0]  # type: ignore[arg-type]
    assert dense_only is not None and dense_only.route == "duplicate"
    assert [m.key for m in dense_only.matches] == [a, b]
    # b shares the rare identifiers: fused first. Its cosine misses the duplicate threshold,
    # so nothing is merged: the ticket is suggested on b's cosine, a is shown second.
    hybrid = decide(
        [me], vectors, stored, lexical=[{a: 1.0, b: 12.0}], alpha=0.7, pool=20, **kwargs
    )[0]  # type: ignore[arg-type]
    assert hybrid is not None and [m.key for m in hybrid.matches] == [b, a]
    assert hybrid.route == "suggest" and hybrid.score == pytest.approx(0.84)
    assert hybrid.canonical == me


# --- the worker's path ------------------------------------------------------------------------

CRASHES = [
    "The mobile app crashes every time I try to log in.",
    "App crashes on the login screen right after I type my password.",
    "Logging in makes the app crash immediately.",
]
RARE = "Nightly export job aborts with code QX-99172 in module zarbolith"
QUERY = "App crashes at login; the log says QX-99172 zarbolith"


@pytest.fixture
def make_services(tmp_path: Path, database_url: str) -> Iterator[object]:
    opened: list[Services] = []
    embedder = LocalEmbedder()

    def make(alpha: float, name: str, pool: int = 1) -> Services:
        store = VectorStore.open(
            model_id=embedder.model_id,
            dimension=embedder.dimension,
            collection="tickets",
            path=tmp_path / name,
        )
        services = Services(
            embedder=embedder,
            store=store,
            engine=db.make_engine(database_url),
            thresholds=Thresholds(0.85, 0.70),
            top_k=2,
            lexical=LexicalIndex() if alpha < 1 else None,
            hybrid_alpha=alpha,
            hybrid_pool=pool,
        )
        opened.append(services)
        return services

    yield make
    for services in opened:
        services.store.close()
        services.engine.dispose()


def history_then_query(services: Services) -> ItemResult:
    history = [
        WorkItem(Ticket(source="t", ticket_id=f"c{i}", body=text), "backfill")
        for i, text in enumerate(CRASHES)
    ]
    history.append(WorkItem(Ticket(source="t", ticket_id="rare", body=RARE), "backfill"))
    triage_batch(history, services)
    [result] = triage_batch([WorkItem(Ticket(source="t", ticket_id="q", body=QUERY))], services)
    return result


def test_a_ticket_found_only_by_bm25_is_ranked_with_its_true_cosine(make_services) -> None:  # type: ignore[no-untyped-def]
    services = make_services(0.7, "chroma")
    result = history_then_query(services)
    # History entered the index in the batch that stored it, then the query.
    assert services.lexical is not None and len(services.lexical) == 5
    assert result.outcome is not None
    matched = {m.key.ticket_id: m.score for m in result.outcome.matches}
    # The worker asked Chroma for the 3 nearest (top_k + 1): the crash reports, not "rare"
    # (q itself is stored now and comes first here). "rare" came from BM25 alone.
    dense = services.store.query(
        services.store._collection.get(ids=[TicketKey("t", "q").as_id()], include=["embeddings"])[
            "embeddings"
        ],
        6,
    )[0]
    true_cosine = {nb.key.ticket_id: nb.score for nb in dense}
    assert "rare" not in [nb.key.ticket_id for nb in dense[1:4]]
    assert "rare" in matched
    assert matched["rare"] == pytest.approx(true_cosine["rare"], abs=1e-5)
    assert result.outcome.score == result.outcome.matches[0].score  # the route reads a cosine


def test_dense_only_never_sees_the_lexical_match(make_services) -> None:  # type: ignore[no-untyped-def]
    services = make_services(1.0, "chroma-dense")
    result = history_then_query(services)
    assert result.outcome is not None
    assert "rare" not in [m.key.ticket_id for m in result.outcome.matches]


def test_batch_mates_are_scored_lexically_in_order(make_services) -> None:  # type: ignore[no-untyped-def]
    services = make_services(0.7, "chroma-batch")
    items = [
        WorkItem(Ticket(source="t", ticket_id="1", body=RARE)),
        WorkItem(Ticket(source="t", ticket_id="2", body=QUERY)),
    ]
    first, second = triage_batch(items, services)
    assert first.outcome is not None and first.outcome.matches == ()  # nothing earlier
    assert second.outcome is not None
    assert [m.key.ticket_id for m in second.outcome.matches] == ["1"]


def test_the_decision_row_names_scores_and_routes_on_the_same_ticket(make_services) -> None:  # type: ignore[no-untyped-def]
    from service.queries import DecisionOut, get_decision

    services = make_services(0.7, "chroma-row", pool=20)
    history = [*CRASHES, RARE, "I was charged twice for my March subscription."]
    triage_batch(
        [
            WorkItem(Ticket(source="t", ticket_id=f"h{i}", body=text), "backfill")
            for i, text in enumerate(history)
        ],
        services,
    )
    query = Ticket(
        source="t", ticket_id="q", body="The app crashes at login, error QX-99172 zarbolith"
    )
    [result] = triage_batch([WorkItem(query)], services)
    assert result.outcome is not None
    cosines = [m.score for m in result.outcome.matches]
    # The rare identifiers rank their ticket above the crash reports, which are closer.
    assert result.outcome.matches[0].key == TicketKey("t", "h3")
    assert cosines[0] < max(cosines)
    with Session(services.engine) as session:
        row = session.scalars(select(db.DecisionRow).where(db.DecisionRow.ticket_id == "q")).one()
    first = row.matches[0]
    assert (row.matched_source, row.matched_ticket_id) == (first["source"], first["ticket_id"])
    assert row.matched_ticket_id == "h3"
    assert row.score == first["score"] == pytest.approx(cosines[0], abs=1e-5)
    assert row.route == Thresholds(0.85, 0.70).route(row.score)
    assert row.ranked_by == "hybrid" and row.fused_score == first["fused_score"]
    assert [m["fused_score"] for m in row.matches] == sorted(
        (m["fused_score"] for m in row.matches), reverse=True
    )
    out = get_decision(services.engine, "t", "q")
    assert isinstance(out, DecisionOut)
    assert (out.score, out.matched_ticket_id, out.ranked_by) == (row.score, "h3", "hybrid")
    assert out.fused_score == row.fused_score and out.matches[0].fused_score == row.fused_score

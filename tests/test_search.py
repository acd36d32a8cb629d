"""`triage search` while a worker owns the embedded store: the worker answers, ranked as it
ranks tickets (hybrid); with no worker running, the command searches the store itself the
same way. The ranking itself (worker/search.py) is checked without a broker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from config.celery_app import create_app
from config.settings import Settings
from tests.conftest import WorkerProcess, n_rows, run_triage, wait_for
from tickets import db
from tickets.model import Ticket, TicketKey
from tickets.queue import publish
from worker.embedding.local import LocalEmbedder
from worker.lexical import LexicalIndex
from worker.pipeline import Services, WorkItem, triage_batch
from worker.routing import Thresholds
from worker.search import search
from worker.store import VectorStore

HISTORY = [
    "The mobile app crashes every time I try to log in.",
    "App crashes on the login screen right after I type my password.",
    "Logging in makes the app crash immediately.",
    "Nightly export job aborts with code QX-99172 in module zarbolith",
    "I was charged twice for my March subscription.",
]
# Closer by cosine to the crash reports, but it shares the rare identifiers of the export.
QUERY = "The app crashes at login, error QX-99172 zarbolith"


def _tickets() -> list[Ticket]:
    return [Ticket(source="hist", ticket_id=f"h{i}", body=t) for i, t in enumerate(HISTORY)]


@pytest.fixture
def services(tmp_path: Path, sqlite_url: str) -> Iterator[Services]:
    embedder = LocalEmbedder()
    store = VectorStore.open(
        model_id=embedder.model_id,
        dimension=embedder.dimension,
        collection="tickets",
        path=tmp_path / "chroma",
    )
    made = Services(
        embedder=embedder,
        store=store,
        engine=db.make_engine(sqlite_url),
        thresholds=Thresholds(0.85, 0.70),
        top_k=5,
        lexical=LexicalIndex(),
        hybrid_alpha=0.7,
        hybrid_pool=20,
    )
    yield made
    store.close()
    made.engine.dispose()


def test_search_ranks_as_the_worker_ranks_a_ticket(services: Services) -> None:
    triage_batch([WorkItem(t, "backfill") for t in _tickets()], services)
    answer = search(services, QUERY, 3)
    assert answer.ranked_by == "hybrid" and answer.answered_by is None
    # The same text routed as a ticket is shown the same tickets, in the same order.
    [routed] = triage_batch([WorkItem(Ticket(source="q", ticket_id="1", body=QUERY))], services)
    assert routed.outcome is not None
    assert [h.key for h in answer.hits] == [m.key for m in routed.outcome.matches[:3]]
    assert [h.cosine for h in answer.hits] == pytest.approx(
        [m.score for m in routed.outcome.matches[:3]], abs=1e-5
    )
    # The rare identifiers rank the export first although the crash reports are closer.
    assert answer.hits[0].key == TicketKey("hist", "h3")
    assert answer.hits[0].cosine < max(h.cosine for h in answer.hits)
    assert answer.hits[0].title.startswith("Nightly export job")
    fused = [h.fused for h in answer.hits]
    assert None not in fused and fused == sorted(fused, reverse=True)  # type: ignore[type-var]

    services.hybrid_alpha = 1.0  # dense only, as TRIAGE_HYBRID_ALPHA=1
    dense = search(services, QUERY, 3)
    assert dense.ranked_by == "cosine" and dense.hits[0].key != TicketKey("hist", "h3")
    assert all(h.fused is None for h in dense.hits)


def test_search_while_a_worker_owns_the_store(
    worker_settings: Callable[..., Settings],
    sqlite_url: str,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    settings = worker_settings()
    worker = start_worker(settings)
    app = create_app(settings)
    list(publish(app, _tickets(), mode="backfill"))
    app.close()
    wait_for(lambda: n_rows(sqlite_url, db.TicketRow) == len(HISTORY), 60, "the history")

    out = run_triage(settings, "search", QUERY, "-k", "3")
    assert out.returncode == 0, out.stderr
    assert "answered by worker w" in out.stderr and "hybrid" in out.stderr, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3 and lines[0].split()[2] == "hist:h3", out.stdout
    cosine, fused = (float(v) for v in lines[0].split()[:2])
    assert 0 < cosine < 1 and fused > 0
    assert "search failed" not in worker.log()

    # No worker running: the command opens the store itself, ranked the same way.
    worker.stop()
    here = run_triage(settings, "search", QUERY, "-k", "3")
    assert here.returncode == 0, here.stderr
    assert "no worker is running (start `triage worker`)" in here.stderr
    assert "searched here" in here.stderr and "hybrid" in here.stderr
    assert here.stdout == out.stdout

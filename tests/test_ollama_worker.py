"""A real worker embedding through the Ollama client, against the local fake Ollama server:
per-ticket Celery retries that really happen, and dead-lettering with the reason."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from config.settings import Settings
from tests.conftest import WorkerProcess, decisions, ingest, n_rows, rows, wait_for
from tests.ollama_fake import CONTEXT_MESSAGE, FakeOllama, Fault
from tickets import db


@pytest.fixture
def ollama() -> Iterator[FakeOllama]:
    with FakeOllama() as fake:
        yield fake


def _one(tmp_path: Path, tid: str) -> Path:
    f = tmp_path / f"{tid}.csv"
    f.write_text(f"id,content\n{tid},The invoice PDF download button does nothing in Firefox\n")
    return f


@pytest.fixture
def ollama_settings(
    worker_settings: Callable[..., Settings], ollama: FakeOllama
) -> Callable[..., Settings]:
    """A worker's settings embedding through the fake Ollama server."""
    return lambda **kw: worker_settings(embedder="ollama", ollama_url=ollama.url, **kw)


def test_busy_ollama_is_retried_by_celery_then_decided(
    ollama_settings: Callable[..., Settings],
    sqlite_url: str,
    start_worker: Callable[..., WorkerProcess],
    ollama: FakeOllama,
    tmp_path: Path,
) -> None:
    settings = ollama_settings()
    worker = start_worker(settings)
    before = len(ollama.calls())
    # The client tries 4 times within one call; the 5th busy answer needs a Celery retry.
    ollama.push(*[Fault.busy()] * 5)
    ingest(settings, _one(tmp_path, "R1"))
    wait_for(lambda: n_rows(sqlite_url, db.DecisionRow) == 1, 90, "the retried ticket's decision")
    assert "retry 1/10" in worker.log()
    assert len(ollama.calls()) - before == 6  # 4 in the first task run, 2 after the retry
    assert rows(sqlite_url, db.FailureRow) == []


def test_rejected_input_is_dead_lettered_with_its_reason(
    ollama_settings: Callable[..., Settings],
    sqlite_url: str,
    start_worker: Callable[..., WorkerProcess],
    ollama: FakeOllama,
    tmp_path: Path,
) -> None:
    settings = ollama_settings()
    start_worker(settings)
    ollama.push(Fault.error(400, CONTEXT_MESSAGE))
    ingest(settings, _one(tmp_path, "P1"))
    wait_for(lambda: len(rows(sqlite_url, db.FailureRow)) == 1, 60, "the failure row")
    (row,) = rows(sqlite_url, db.FailureRow)
    assert (row.ticket_id, row.error_type, row.attempts) == ("P1", "EmbeddingRejected", 1)
    assert "context length" in row.reason
    assert row.payload["ticket_id"] == "P1"  # kept whole for a later re-drive
    assert n_rows(sqlite_url, db.DecisionRow) == 0


def test_retries_are_capped_then_dead_lettered(
    ollama_settings: Callable[..., Settings],
    sqlite_url: str,
    start_worker: Callable[..., WorkerProcess],
    ollama: FakeOllama,
    tmp_path: Path,
) -> None:
    settings = ollama_settings(max_retries=1)
    start_worker(settings)
    ollama.push(*[Fault.busy()] * 8)
    ingest(settings, _one(tmp_path, "X1"))
    wait_for(lambda: len(rows(sqlite_url, db.FailureRow)) == 1, 90, "the failure row")
    (row,) = rows(sqlite_url, db.FailureRow)
    assert row.error_type == "EmbedderUnavailable" and row.attempts == 2
    assert row.reason.startswith("gave up after retries") and "503" in row.reason


def test_worker_refuses_to_start_when_the_model_is_not_pulled(
    worker_settings: Callable[..., Settings],
    start_worker: Callable[..., WorkerProcess],
) -> None:
    with FakeOllama(models=["nomic-embed-text"]) as fake:
        worker = start_worker(worker_settings(embedder="ollama", ollama_url=fake.url), ready=False)
        assert worker.wait_exit() == 1
    assert "ollama pull all-minilm" in worker.log()


def test_poison_ticket_fails_alone_and_its_batch_mates_are_decided(
    worker_settings: Callable[..., Settings],
    sqlite_url: str,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    # Ollama 0.13.5-0.15.6 ignore truncate for all-minilm (ollama#14186): an input over the context
    # fails the whole batch with 400. A hex dump is over it even after the client's cut.
    with FakeOllama(ignore_truncate=True) as fake:
        settings = worker_settings(embedder="ollama", ollama_url=fake.url, batch_wait_ms=1000)
        start_worker(settings)
        dump = " ".join(f"0x{i:02x}," for i in range(256))
        f = tmp_path / "batch.csv"
        f.write_text(
            "id,content\n"
            "G1,The invoice PDF download button does nothing in Firefox\n"
            f'BAD,"Crash dump: {dump}"\n'
            # the fake's vectors are hashes of the text: only the same text is similar
            "G2,The invoice PDF download button does nothing in Firefox\n"
        )
        ingest(settings, f)
        wait_for(
            lambda: (
                n_rows(sqlite_url, db.DecisionRow) == 2
                and len(rows(sqlite_url, db.FailureRow)) == 1
            ),
            60,
            "rows",
        )
        batch_sizes = [len(r.body["input"]) for r in fake.calls() if r.body and r.body.get("input")]
    (row,) = rows(sqlite_url, db.FailureRow)
    assert (
        row.ticket_id == "BAD"
        and row.error_type == "EmbeddingRejected"
        and "context length" in row.reason
    )
    assert batch_sizes[-4:] == [
        3,
        1,
        1,
        1,
    ]  # one call for the batch, then one per ticket to isolate it
    routes = {d.ticket_id: d.route for d in decisions(sqlite_url).values()}
    assert routes == {"G1": "manual", "G2": "duplicate"}


def test_a_grouped_message_retries_only_its_tickets_that_met_a_transient_error(
    ollama_settings: Callable[..., Settings],
    sqlite_url: str,
    start_worker: Callable[..., WorkerProcess],
    ollama: FakeOllama,
    tmp_path: Path,
) -> None:
    # Four tickets in one message, batches of two: the first batch's embedding call meets
    # four busy answers (all of the client's own attempts), the second batch goes through.
    settings = ollama_settings(batch_size=2)
    worker = start_worker(settings)
    before = len(ollama.calls())
    ollama.push(*[Fault.busy()] * 4)
    f = tmp_path / "four.csv"
    f.write_text(
        "id,content\n"
        "A1,The invoice PDF download button does nothing in Firefox\n"
        "A2,Password reset emails never arrive\n"
        "A3,The mobile app crashes when I open settings\n"
        "A4,Dark mode makes the table headers unreadable\n"
    )
    ingest(settings, f, "--per-message", "4")
    wait_for(lambda: n_rows(sqlite_url, db.DecisionRow) == 4, 90, "all four decisions")
    assert "2 ticket(s), first e2e:A1" in worker.log()
    inputs = [len(r.body["input"]) for r in ollama.calls()[before:] if r.body]
    # 4 busy attempts of batch 1, batch 2, then the retry carrying batch 1's two tickets only.
    assert inputs == [2, 2, 2, 2, 2, 2], inputs
    assert rows(sqlite_url, db.FailureRow) == []

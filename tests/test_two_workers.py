"""Two and four worker processes sharing a real `chroma run` server, PostgreSQL and the
Redis lock: near-duplicate pairs split across them are still caught, one way (sequential
semantics)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from config.celery_app import create_app
from config.settings import Settings
from tests.conftest import WorkerProcess, decisions, n_rows, wait_for
from tickets import db
from tickets.model import Ticket
from tickets.queue import publish

# Ten unrelated problems, each reported twice in nearly the same words.
TOPICS = [
    "The Android app crashes as soon as I press the login button after the update.",
    "I was charged twice for my March subscription, please refund one of the payments.",
    "My parcel has been stuck in transit for ten days and the tracking does not move.",
    "The CSV export of my sales report only contains the header row and no data.",
    "Please add our company VAT number to every invoice we receive from you.",
    "The password reset email link says it expired even when I click it immediately.",
    "The table lamp arrived with a cracked glass shade, I would like a replacement.",
    "Your public API returns HTTP 500 errors for the orders endpoint since this morning.",
    "How can I change the e-mail address that is registered on my account?",
    "Two-factor authentication codes from my authenticator app are always rejected.",
]


def _twin(text: str) -> str:
    return text.replace(" the ", " the the ", 1).rstrip(".") + "!"


@pytest.fixture
def chroma_server(tmp_path: Path) -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    chroma = Path(sys.executable).with_name("chroma")
    log = (tmp_path / "chroma.log").open("wb")
    proc = subprocess.Popen(
        [
            str(chroma),
            "run",
            "--path",
            str(tmp_path / "chroma-server"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{url}/api/v2/heartbeat", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (
                tmp_path / "chroma.log"
            ).read_text()
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


@pytest.mark.parametrize("n_workers", [2, 4])
def test_pairs_split_across_workers_are_caught(
    n_workers: int,
    make_settings: Callable[..., Settings],
    postgres_server: str,
    request: pytest.FixtureRequest,
    chroma_server: str,
    queue_name: str,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    from tests.conftest import _create_pg_database
    from tickets import migrate

    url, drop = _create_pg_database(postgres_server)
    request.addfinalizer(drop)
    engine = db.make_engine(url)
    migrate.upgrade(engine)
    engine.dispose()

    common = {"database_url": url, "chroma_url": chroma_server, "batch_wait_ms": 500}
    workers = [make_settings(queue=f"{queue_name}-{w}", **common) for w in range(n_workers)]
    for settings in workers:
        start_worker(settings)

    # The originals go to the first half of the workers, the twins to the other half, all
    # published within milliseconds: the workers' batches flush together and race for the
    # store, and only the decision lock keeps them sequential.
    half = n_workers // 2
    for prefix, texts, first in (("A", TOPICS, 0), ("B", [_twin(t) for t in TOPICS], half)):
        for w in range(half):
            settings = workers[first + w]
            tickets = [
                Ticket(source="pair", ticket_id=f"{prefix}{i}", body=t)
                for i, t in enumerate(texts)
                if i % half == w
            ]
            assert len(list(publish(create_app(settings), tickets))) == len(tickets)

    wait_for(lambda: n_rows(url, db.DecisionRow) == 2 * len(TOPICS), 120, "all decisions")
    rows = decisions(url)
    for i in range(len(TOPICS)):
        pair = rows[f"A{i}"], rows[f"B{i}"]
        routes = sorted(r.route for r in pair)
        assert routes[0] == "duplicate" and routes[1] != "duplicate", (i, routes)
        dup = pair[0] if pair[0].route == "duplicate" else pair[1]
        other = pair[1] if dup is pair[0] else pair[0]
        assert dup.matched_ticket_id == other.ticket_id == dup.canonical_ticket_id
        assert other.id < dup.id  # the original was decided first
    # every worker really took part
    assert {r.ticket_id[0] for r in rows.values()} == {"A", "B"}

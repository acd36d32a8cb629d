"""The outbox through real Celery worker processes, real Redis, SQLite and PostgreSQL, and a
served receiver: decisions become signed webhooks, retried, dead-lettered, re-driven, and
swept up after a crash between the decision's commit and its publish."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
import requests
from sqlalchemy import select
from sqlalchemy.orm import Session

from actions.outbox import Outbox
from config.celery_app import actions_queue
from config.settings import Settings
from tests.conftest import FIXTURES, WorkerProcess, ingest, run_triage, wait_for
from tests.receiver import SECRET, Answer, Receiver
from tests.services import ServeProcess
from tests.test_actions import decision_values
from tickets import db, outbox
from tickets.outbox import ActionRow

TICKETS = FIXTURES / "e2e_tickets.csv"
N_TICKETS = 12
READER = {"reader-token-0123456789": ["read"]}


@pytest.fixture
def hook_settings(
    make_settings: Callable[..., Settings], receiver: Receiver, queue_name: str, redis_url: str
) -> Iterator[Callable[..., Settings]]:
    def build(**overrides: Any) -> Settings:
        return make_settings(
            **{
                "queue": queue_name,
                "outbound_webhook_url": receiver.url,
                "outbound_webhook_secret": SECRET,
                "actions_timeout_s": 2,
                "actions_sweep_s": 0.5,
                "actions_backoff_max_s": 2,
                "api_tokens": READER,
                **overrides,
            }
        )

    yield build
    client = redis.Redis.from_url(redis_url)
    client.delete(actions_queue(queue_name), f"{queue_name}.search")


def actions_of(url: str) -> list[ActionRow]:
    engine = db.make_engine(url)
    try:
        with Session(engine) as session:
            return list(session.scalars(select(ActionRow).order_by(ActionRow.id)))
    finally:
        engine.dispose()


def test_each_decision_is_one_signed_post_with_the_read_api_body(
    hook_settings: Callable[..., Settings],
    database_url: str,
    receiver: Receiver,
    start_worker: Callable[..., WorkerProcess],
    start_serve: Callable[[Settings], ServeProcess],
) -> None:
    settings = hook_settings(database_url=database_url)
    start_worker(settings)
    ingest(settings, TICKETS)
    wait_for(lambda: len(receiver.delivered()) >= N_TICKETS, 90, "12 deliveries")
    wait_for(
        lambda: {a.status for a in actions_of(database_url)} == {"delivered"}, 30, "rows settled"
    )
    got = receiver.all()
    assert len(got) == N_TICKETS, "one POST per decision, none twice"
    ids = [r.headers["webhook-id"] for r in got]
    assert len(set(ids)) == N_TICKETS
    assert {a.action_id for a in actions_of(database_url)} == set(ids)
    serve = start_serve(settings)
    for request in got:
        body = receiver.verify(request)  # the reference library accepts the signature
        answer = requests.get(
            f"{serve.url}/v1/decisions/{body['source']}/{body['ticket_id']}",
            headers={"Authorization": "Bearer reader-token-0123456789"},
            timeout=10,
        )
        assert answer.status_code == 200
        assert body == answer.json()
    metrics = requests.get(f"{serve.url}/metrics", timeout=10).text
    assert f'triage_actions{{kind="webhook",status="delivered"}} {N_TICKETS}.0' in metrics
    assert 'triage_actions{kind="webhook",status="dead"} 0.0' in metrics


def test_retry_after_outage_and_dead_letters_through_a_worker(
    hook_settings: Callable[..., Settings],
    sqlite_url: str,
    receiver: Receiver,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    settings = hook_settings(database_url=sqlite_url)
    # First answer: 429 with Retry-After 3; then the receiver goes down for a while.
    receiver.answer(Answer(429, {"Retry-After": "3"}, b'{"error": "rate limited"}'))
    start_worker(settings)
    ingest(settings, TICKETS, "--per-message", "1")
    wait_for(lambda: len(receiver.all()) >= 1, 60, "the first POST")
    first = receiver.all()[0]
    receiver.stop()
    downtime_end = datetime.now(UTC) + timedelta(seconds=5)
    wait_for(
        lambda: any("ConnectionError" in (a.last_error or "") for a in actions_of(sqlite_url)),
        60,
        "an attempt against the receiver while it is down",
    )
    time.sleep(max(0.0, (downtime_end - datetime.now(UTC)).total_seconds()))
    receiver.start()
    wait_for(
        lambda: (
            {a.status for a in actions_of(sqlite_url)} == {"delivered"}
            and len(actions_of(sqlite_url)) == N_TICKETS
        ),
        90,
        "every action delivered after the outage",
    )
    retried = [r for r in receiver.all() if r.headers["webhook-id"] == first.headers["webhook-id"]]
    assert retried[0].status == 429 and retried[-1].status == 200
    assert retried[1].at - retried[0].at >= 3.0, "Retry-After: 3 was not waited out"
    assert len({r.headers["webhook-id"] for r in receiver.delivered()}) == N_TICKETS
    for request in receiver.all():
        receiver.verify(request)


def test_a_refused_delivery_is_dead_listed_and_redriven(
    hook_settings: Callable[..., Settings],
    database_url: str,
    receiver: Receiver,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    settings = hook_settings(database_url=database_url)
    receiver.default = Answer(401, {}, b'{"message": "unknown signing key"}')
    start_worker(settings)
    ingest(settings, TICKETS)
    wait_for(
        lambda: [a.status for a in actions_of(database_url)] == ["dead"] * N_TICKETS,
        90,
        "every action dead",
    )
    assert len(receiver.all()) == N_TICKETS, "a permanent refusal is not retried"
    listed = run_triage(settings, "actions", "--format", "json")
    assert listed.returncode == 0, listed.stderr
    assert '"last_error": "HTTP 401 Unauthorized: {\\"message\\": \\"unknown signing key\\"}"' in (
        listed.stdout
    )
    assert listed.stdout.count('"status": "dead"') == N_TICKETS
    receiver.default = Answer()
    redriven = run_triage(settings, "actions", "--redrive")
    assert redriven.returncode == 0, redriven.stderr
    assert f"{N_TICKETS} dead action(s) sent again" in redriven.stdout
    wait_for(lambda: len(receiver.delivered()) == N_TICKETS, 60, "the redriven deliveries")
    wait_for(
        lambda: {a.status for a in actions_of(database_url)} == {"delivered"}, 30, "rows settled"
    )
    first, again = receiver.all()[:N_TICKETS], receiver.all()[N_TICKETS:]
    assert sorted(r.headers["webhook-id"] for r in first) == sorted(
        r.headers["webhook-id"] for r in again
    )
    assert run_triage(settings, "actions").stdout.strip() == "(none)"


def test_committed_but_never_published_is_swept_up(
    hook_settings: Callable[..., Settings],
    database_url: str,
    receiver: Receiver,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    """A worker that dies right after the decision's commit publishes nothing: the rows are
    all there is. A running worker's sweeper delivers them once their grace has passed."""
    settings = hook_settings(database_url=database_url)
    engine = db.make_engine(database_url)
    lost: list[list[str]] = []
    box = Outbox(settings, lost.append)
    values = [decision_values(f"crash-{n}") for n in range(3)]
    with Session(engine) as session:
        db.save_batch(session, [], values)
        box.stage(session, values)
        session.commit()
    assert len(box._committed) == 3  # committed, and never published
    engine.dispose()
    start_worker(settings)
    wait_for(lambda: len(receiver.delivered()) == 3, settings.actions_lease_s + 30, "the sweep")
    assert {r.headers["webhook-id"] for r in receiver.all()} == set(box._committed)
    wait_for(
        lambda: {a.status for a in actions_of(database_url)} == {"delivered"}, 30, "rows settled"
    )


def test_dry_run_sends_nothing(
    hook_settings: Callable[..., Settings],
    sqlite_url: str,
    receiver: Receiver,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    settings = hook_settings(database_url=sqlite_url, actions_dry_run=True)
    start_worker(settings)
    ingest(settings, TICKETS)
    wait_for(lambda: len(actions_of(sqlite_url)) == N_TICKETS, 60, "the recorded actions")
    rows = actions_of(sqlite_url)
    assert {a.status for a in rows} == {outbox.DRY_RUN}
    assert {a.payload["ticket_id"] for a in rows} == {f"E{n:02d}" for n in range(1, 13)}
    listed = run_triage(settings, "actions", "--status", "dry-run", "--format", "csv")
    assert listed.stdout.count("dry-run") == N_TICKETS
    time.sleep(settings.actions_sweep_s * 3)  # sweeps that must not send anything
    assert receiver.all() == []


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_deliveries_worker_delivers_what_ticket_workers_leave_and_needs_no_model(
    hook_settings: Callable[..., Settings],
    database_url: str,
    receiver: Receiver,
    start_worker: Callable[..., WorkerProcess],
) -> None:
    settings = hook_settings(database_url=database_url, worker_role="tickets")
    start_worker(settings)
    ingest(settings, TICKETS)
    url = database_url
    wait_for(lambda: len(actions_of(url)) >= N_TICKETS, 90, "12 decisions with their actions")
    # A `tickets` worker neither delivers nor sweeps: the actions wait for a delivery worker.
    time.sleep(3 * settings.actions_sweep_s + 1)
    assert {a.status for a in actions_of(url)} == {"pending"} and receiver.all() == []

    # No model: an embedder that cannot be reached does not stop a deliveries worker.
    deliveries = hook_settings(
        database_url=database_url,
        worker_role="deliveries",
        embedder="ollama",
        ollama_url="http://127.0.0.1:9",
    )
    worker = start_worker(deliveries)
    wait_for(lambda: len(receiver.delivered()) >= N_TICKETS, 60, "12 deliveries")
    wait_for(lambda: {a.status for a in actions_of(url)} == {"delivered"}, 30, "rows settled")
    ids = [r.headers["webhook-id"] for r in receiver.all()]
    assert len(ids) == len(set(ids)) == N_TICKETS, "one POST per decision"
    assert "Task triage.action" in worker.log()

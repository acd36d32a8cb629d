"""Redis Sentinel, for real: a private master, replica and three `redis-server --sentinel`
processes (tests/redis_sentinel.py), every password set.

The product reaches Redis through one factory (config/redis_client.py) and the Celery broker
through kombu's Sentinel transport, both from TRIAGE_REDIS_URL in kombu's ``sentinel://``
form. The end-to-end test runs a real worker (with the decision lock: a `chroma run` server
and PostgreSQL, as on several hosts) and a real `triage serve` taking tickets on its ingest
API, then kills the master with SIGKILL: the sentinels promote the replica, and every ticket
the API accepted, before, during and after, is decided exactly once by the same worker.

CI size: one failover. TRIAGE_FAULTS=full: three, the killed master coming back each time as
a replica of the new one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from celery import Celery
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from config.celery_app import celery_config, create_app
from config.redis_client import connect
from config.settings import Settings
from producer.intake import Intake
from service.health import check_redis, doctor_line
from tests.conftest import WorkerProcess, _create_pg_database, wait_for
from tests.faults.harness import ChromaServer, scale
from tests.redis_sentinel import MASTER_NAME, SentinelGroup, queued_ids
from tests.services import ServeProcess
from tickets import db, migrate
from tickets.heartbeat import live_workers
from tickets.model import Ticket
from tickets.queue import BrokerUnavailable, publish

DATA_PASSWORD = "data-pw-4f9c2a7e1b"
SENTINEL_PASSWORD = "sentinel-pw-83d1e6b0c5"
TOKEN = "sentinel-feeder-token-7Qx2"
FEED = {"Authorization": f"Bearer {TOKEN}"}
FAILOVERS = scale(1, 3)
# The servers' configuration docs/deployment.md asks for: a master without a replica in
# sync refuses writes, and two replicas keep one behind a new master after a failover.
RECOMMENDED = {"replicas": 2, "extra": ("min-replicas-to-write 1", "min-replicas-max-lag 10")}
RATE_PER_S = 15


@pytest.fixture
def group(tmp_path: Path) -> Iterator[SentinelGroup]:
    g = SentinelGroup(
        tmp_path / "sentinel",
        password=DATA_PASSWORD,
        sentinel_password=SENTINEL_PASSWORD,
        **RECOMMENDED,  # type: ignore[arg-type]
    )
    yield g
    g.stop()


@pytest.fixture
def sentinel_settings(
    group: SentinelGroup, make_settings: Callable[..., Settings], queue_name: str
) -> Settings:
    return make_settings(
        redis_url=group.url(),
        redis_sentinel_master=MASTER_NAME,
        redis_sentinel_password=SENTINEL_PASSWORD,
        queue=queue_name,
    )


def test_every_client_of_the_product_reaches_the_master(
    group: SentinelGroup, sentinel_settings: Settings
) -> None:
    master = group.master_port()
    client = connect(sentinel_settings, timeout_s=5)
    client.set("triage:probe", "1")
    # written on the master (and replicated), not on whatever the first URL names
    assert group.data_client(master).get("triage:probe") == b"1"
    assert client.connection_pool.get_master_address() == ("127.0.0.1", master)  # type: ignore[attr-defined]

    # The broker: kombu's Sentinel transport with the master's name, publishing to the master.
    config = celery_config(sentinel_settings)
    assert config["broker_transport"] == "config.broker:SentinelTransport"
    assert config["broker_transport_options"]["master_name"] == MASTER_NAME
    app = create_app(sentinel_settings)
    sent = list(publish(app, [Ticket(source="s", ticket_id="1", body="hello")]))
    assert len(sent) == 1
    assert group.data_client(master).llen(sentinel_settings.queue) == 1
    app.close()

    # Readiness and `triage doctor` name the master the sentinels chose, never a password.
    check = check_redis(client, sentinel_settings)
    assert check.ok and check.detail["master"] == f"127.0.0.1:{master}"
    line = doctor_line(check)
    assert f"master 127.0.0.1:{master} (Sentinel)" in line
    assert DATA_PASSWORD not in line and "sentinel://:***@127.0.0.1" in line

    # Wrong sentinel password: refused, and said so without showing it.
    wrong = sentinel_settings.model_copy(update={"redis_sentinel_password": None})
    with pytest.raises(Exception) as failed:
        connect(wrong, timeout_s=2).ping()
    assert DATA_PASSWORD not in str(failed.value)


class ApiLoad:
    """Posts one ticket per request to the ingest API at RATE_PER_S until stopped; keeps
    the ids the API accepted (202) and counts the ones it refused (503 while Redis fails
    over) or that got no answer."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.accepted: list[str] = []
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        session = requests.Session()
        n = 0
        while not self._stop.wait(1 / RATE_PER_S):
            ticket_id = f"T{n:05d}"
            body = {
                "source": "sentinel",
                "ticket_id": ticket_id,
                "subject": f"Order {n} problem",
                "body": f"Problem number {n}: my order {n * 7919 % 10007} never arrived.",
            }
            n += 1
            try:
                r = session.post(self.url + "/v1/tickets", json=body, headers=FEED, timeout=15)
            except requests.RequestException:
                self.refused += 1
                continue
            if r.status_code == 202 and r.json()["tickets"][0]["status"] == "accepted":
                self.accepted.append(ticket_id)
            else:
                assert r.status_code in (503, 429), (r.status_code, r.text)
                self.refused += 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def _decided(url: str) -> dict[str, int]:
    engine = db.make_engine(url)
    with Session(engine) as s:
        rows = s.execute(
            select(db.DecisionRow.ticket_id, func.count()).group_by(db.DecisionRow.ticket_id)
        ).all()
    engine.dispose()
    return {ticket_id: int(n) for ticket_id, n in rows}


@pytest.mark.timeout(scale(180, 600))
def test_tickets_are_decided_through_a_master_failover(
    group: SentinelGroup,
    sentinel_settings: Settings,
    postgres_server: str,
    request: pytest.FixtureRequest,
    start_worker: Callable[..., WorkerProcess],
    start_serve: Callable[[Settings], ServeProcess],
    tmp_path: Path,
) -> None:
    pg_url, drop = _create_pg_database(postgres_server)
    request.addfinalizer(drop)
    engine = db.make_engine(pg_url)
    migrate.upgrade(engine)
    engine.dispose()
    chroma = ChromaServer(tmp_path)
    request.addfinalizer(chroma.stop)
    settings = sentinel_settings.model_copy(
        update={
            "database_url": pg_url,
            "chroma_url": chroma.url,  # the decision lock is taken in Redis
            "api_tokens": {TOKEN: ["ingest", "read"]},
            "rate_limit_per_s": 0,
            "batch_wait_ms": 100,
            # A message the killed master took with it, or whose ack it lost, comes back
            # within seconds: visibility timeout and restore sweep.
            "visibility_timeout_s": 8,
            "unacked_restore_interval_s": 1,
            "retry_backoff_max_s": 4,
            "ledger_sweep_s": 2,
            "ledger_silence_s": 20,
        }
    )
    worker = start_worker(settings, ready=False)  # loads its model while serve starts
    serve = start_serve(settings)
    worker.wait_ready()
    load = ApiLoad(serve.url)
    try:
        wait_for(lambda: len(_decided(pg_url)) >= 10, 60, "decisions before the failover")
        for _ in range(FAILOVERS):
            old = group.master_port()
            new, took = group.kill_master()
            assert new != old and took < 30
            accepted_at_failover = len(load.accepted)
            # Accepted after the failover, and decided.
            wait_for(
                lambda n=accepted_at_failover: len(load.accepted) >= n + 10,
                60,
                "tickets accepted after the failover",
            )
            wanted = set(load.accepted[accepted_at_failover:])
            wait_for(lambda w=wanted: w <= set(_decided(pg_url)), 60, "their decisions")
            if FAILOVERS > 1:
                # The old master comes back: the sentinels make it a replica of the new one.
                group.node(old).start()
                wait_for(
                    lambda o=old: group.data_client(o).info("replication")["role"] == "slave",
                    60,
                    "the old master to rejoin as a replica",
                )
                wait_for(
                    lambda o=old: (
                        group.data_client(o).info("replication")["master_link_status"] == "up"
                    ),
                    60,
                    "the old master to sync",
                )
    finally:
        load.stop()

    accepted = set(load.accepted)
    wait_for(lambda: accepted <= set(_decided(pg_url)), 90, "every accepted ticket")
    decided = _decided(pg_url)
    assert not accepted - set(decided), "accepted tickets lost"
    doubled = {k: n for k, n in decided.items() if n > 1}
    assert not doubled, doubled
    assert worker.proc.poll() is None and "Unrecoverable error" not in worker.log()
    assert worker.log().count("Connection to broker lost") >= FAILOVERS
    assert load.refused < len(accepted)  # the API was down only while Redis failed over

    # The worker's heartbeat lives on the new master; readiness and status look there too.
    client = group.data_client(group.master_port())
    wait_for(lambda: len(live_workers(client, settings.queue)) == 1, 30, "the heartbeat")
    ready = requests.get(serve.url + "/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    status = requests.get(serve.url + "/v1/status", headers=FEED, timeout=10).json()["checks"]
    assert status["redis"]["master"] == f"127.0.0.1:{group.master_port()}"
    assert status["workers"]["count"] == 1
    for log in (worker.log(), serve.log()):
        assert DATA_PASSWORD not in log and SENTINEL_PASSWORD not in log


def test_the_settings_reach_celery_masked(sentinel_settings: Settings) -> None:
    app = Celery("probe")
    app.conf.update(celery_config(sentinel_settings))
    shown = str(app.conf.humanize(with_defaults=False, censored=True))
    assert "master_name" in shown
    for secret in (DATA_PASSWORD, SENTINEL_PASSWORD):
        assert secret not in shown
    app.close()


@pytest.mark.timeout(120)
def test_stopping_the_master_for_maintenance_loses_no_accepted_ticket(
    tmp_path: Path, make_settings: Callable[..., Settings], queue_name: str
) -> None:
    """The maintenance path docs/deployment.md gives: stop the master's process (SIGTERM;
    Redis 7 waits for its replicas to catch up before it exits) and let the sentinels
    promote a replica. The producer answers 503 meanwhile, and every ticket it accepted,
    before and after, is on the new master's queue. (`SENTINEL FAILOVER` on a running master
    is not that path: bench/sentinel_failover.py measures what it loses.)"""
    group = SentinelGroup(
        tmp_path / "sentinel",
        password=DATA_PASSWORD,
        sentinel_password=SENTINEL_PASSWORD,
        **RECOMMENDED,  # type: ignore[arg-type]
    )
    try:
        settings = make_settings(
            redis_url=group.url(),
            redis_sentinel_password=SENTINEL_PASSWORD,
            queue=queue_name,
        )
        app = create_app(settings)
        intake = Intake(app, connect(settings, timeout_s=3), queue=settings.queue, dedupe_ttl_s=600)
        accepted: list[str] = []
        refused = 0

        def accept(n: int) -> None:
            nonlocal refused
            ticket = Ticket(source="planned", ticket_id=f"P{n:05d}", body=f"problem {n}")
            try:
                [answer] = intake.accept([ticket])
            except BrokerUnavailable:
                refused += 1
                return
            assert answer.status == "accepted"
            accepted.append(ticket.ticket_id)

        n = 0
        for _ in range(50):
            accept(n := n + 1)
        old = group.master_port()
        stopped = group.node(old)
        assert stopped.proc is not None
        stopped.proc.terminate()
        deadline = time.monotonic() + 30
        while group.master_port() == old or len(accepted) < 100:
            assert time.monotonic() < deadline, "no failover, or nothing accepted after it"
            accept(n := n + 1)
            time.sleep(0.01)
        app.close()
        on_new_master = queued_ids(group.data_client(group.master_port()), settings.queue)
        lost = set(accepted) - on_new_master
        assert not lost, f"{len(lost)} accepted tickets lost, e.g. {sorted(lost)[:5]}"
        assert refused > 0  # the producer said 503 while there was no master
    finally:
        group.stop()

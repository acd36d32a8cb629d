"""Backpressure on real services: a private Redis, a real worker, the real ASGI app and the
real `triage ingest`.

The embedding service is "down" as the fake Ollama answering 503 to every embed call (a
refused connection would look the same to the worker: EmbedderUnavailable, retried).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import redis
from fastapi.testclient import TestClient

from config.settings import Settings
from producer.guards import QueueGate
from service.app import create_app
from tests.conftest import ROOT, WorkerProcess, n_rows, settings_env, wait_for
from tests.ollama_fake import FakeOllama, Fault
from tests.services import private_redis
from tickets import db

FEED = {"Authorization": "Bearer feeder"}
DEPTH = 40


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks


def _ticket(i: int) -> dict[str, str]:
    return {"source": "email", "ticket_id": f"bp-{i}", "body": f"Ticket {i}: the VPN drops"}


def test_webhook_sheds_load_while_the_embedder_is_down_and_nothing_is_lost(
    make_settings: Callable[..., Settings],
    sqlite_url: str,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    with FakeOllama() as ollama, private_redis(tmp_path) as url:
        settings = make_settings(
            redis_url=url,
            database_url=sqlite_url,
            queue="bp",
            embedder="ollama",
            ollama_url=ollama.url,
            api_tokens={"feeder": ["ingest"]},
            max_queue_depth=DEPTH,
            rate_limit_per_s=0,
            retry_backoff_max_s=5,  # a short cap, so the test also sees it hold
        )
        worker = start_worker(settings)
        ollama.push(*[Fault.busy()] * 100_000)  # down from now on
        calls0, cpu0, t0 = len(ollama.calls()), _cpu_s(worker.proc.pid), time.monotonic()
        accepted: list[int] = []
        with TestClient(create_app(settings)) as client:
            for i in range(4 * DEPTH):
                r = client.post("/v1/tickets", json=_ticket(i), headers=FEED)
                if r.status_code == 503:
                    break
                assert r.status_code == 202, r.text
                accepted.append(i)
                time.sleep(0.03)  # ~30 requests/s: the 1 s depth cache overshoots by <= ~30
            else:
                raise AssertionError(f"never refused: {len(accepted)} tickets accepted")
            assert r.headers["Retry-After"] == "30"
            assert "tickets are waiting (limit 40)" in r.json()["detail"]
            backlog = QueueGate(redis.Redis.from_url(url), "bp", DEPTH).depth()
            assert DEPTH <= len(accepted) <= DEPTH + 40 and backlog >= DEPTH, (
                len(accepted),
                backlog,
            )

            time.sleep(12)  # the outage goes on: the worker must wait, not spin
            elapsed = time.monotonic() - t0
            calls = len(ollama.calls()) - calls0
            cpu = _cpu_s(worker.proc.pid) - cpu0
            assert client.post("/v1/tickets", json=_ticket(999), headers=FEED).status_code == 503

            with ollama._lock:  # the embedding service is back
                ollama._faults.clear()
            wait_for(
                lambda: n_rows(sqlite_url, db.DecisionRow) == len(accepted),
                120,
                f"{len(accepted)} decisions after the outage",
            )
            assert n_rows(sqlite_url, db.FailureRow) == 0
            wait_for(
                lambda: QueueGate.depth(client.app.state.clients.gate) < DEPTH, 30, "an empty queue"
            )
            time.sleep(1.1)  # past the depth cache
            assert client.post("/v1/tickets", json=_ticket(1000), headers=FEED).status_code == 202

    # Nothing spins hot: each ticket backs off 1, 2, 4 s, capped at 5 s (±25 % jitter), and
    # every batch of tickets costs one embed call of up to 4 attempts.
    print(f"outage {elapsed:.1f} s: {calls} embed calls, worker CPU {cpu:.2f} s")
    assert calls / elapsed < 15, f"{calls} embed calls in {elapsed:.1f} s"
    assert cpu / elapsed < 0.6, f"worker used {cpu:.1f} s CPU in {elapsed:.1f} s"
    countdowns = [float(c) for c in re.findall(r"retry \d+/10 in ([\d.]+) s", worker.log())]
    assert countdowns and max(countdowns) <= 5 * 1.25 and max(countdowns) >= 3.0, countdowns


def _ingest(settings: Settings, path: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "ingest", str(path), "--quiet", *extra],
        cwd=ROOT,
        env=settings_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_ingest_pauses_at_the_limit_then_resumes(
    make_settings: Callable[..., Settings],
    sqlite_url: str,
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    rows = "".join(f"I{i},Ticket {i}: invoice number {i} is wrong\n" for i in range(700))
    file = tmp_path / "tickets.csv"
    file.write_text("id,content\n" + rows)
    with private_redis(tmp_path) as url:
        settings = make_settings(
            redis_url=url, database_url=sqlite_url, queue="bp", max_queue_depth=100
        )
        r = redis.Redis.from_url(url)

        # No worker: after the first publish batch (500) the queue is over the limit. One
        # ticket per message, so that messages and tickets count alike here.
        gave_up = _ingest(settings, file, "--max-wait", "2", "--per-message", "1")
        _, err = gave_up.communicate(timeout=60)
        assert gave_up.returncode == 1, err
        assert "500 messages still waiting" in err and "are the workers running?" in err
        assert "enqueued before the error: 500" in err and "safe" in err
        assert r.llen("bp") == 500  # what it counted is what is on the queue

        # Again, with patience: it waits until a worker drains the queue, then finishes.
        patient = _ingest(settings, file, "--max-wait", "300", "--per-message", "1")
        time.sleep(3)
        assert patient.poll() is None, "ingest must wait while the queue is full"
        assert r.llen("bp") == 500  # it waited before publishing anything
        start_worker(settings)
        _, err = patient.communicate(timeout=300)
        assert patient.returncode == 0, err
        assert "pausing until the workers catch up" in err
        assert "700 tickets enqueued" in err
        # 1,200 messages, 700 tickets: the re-sent ones are absorbed, none is doubled.
        wait_for(lambda: n_rows(sqlite_url, db.DecisionRow) == 700, 300, "700 decisions")
        wait_for(lambda: r.llen("bp") == 0, 60, "an empty queue")
        assert n_rows(sqlite_url, db.DecisionRow) == 700
        assert n_rows(sqlite_url, db.FailureRow) == 0

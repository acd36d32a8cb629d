"""What the fault suite injects faults with, and how it counts.

Everything here is real and private to one test: a redis-server with AOF on its own port
(the shared Redis on 6379 is never touched), a TCP proxy in front of a service that the
test can cut and restore, a `chroma run` server. The tally reads the real PostgreSQL
database and the real Chroma server.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis
import requests
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from tickets import db
from tickets.model import Ticket, TicketKey
from tickets.outbox import ActionRow

FULL = os.environ.get("TRIAGE_FAULTS", "").lower() == "full"
RESULTS = Path(
    os.environ.get("TRIAGE_FAULT_REPORT") or Path(__file__).with_name(".results") / "faults.jsonl"
)


def scale(ci: Any, full: Any) -> Any:
    """The CI-sized value by default, the full one with TRIAGE_FAULTS=full."""
    return full if FULL else ci


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll until predicate() holds; return the seconds it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - start


# --- private services ------------------------------------------------------------------------


class PrivateRedis:
    """redis-server on its own port with AOF (appendfsync everysec, as in docker-compose)."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log = (self.dir / "redis.log").open("ab")
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.dir),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        client = self.client()
        wait_until(lambda: _pings(client), 20, f"redis-server on port {self.port}")

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def kill(self) -> None:
        """SIGKILL: no shutdown save; only what the AOF holds survives."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


class TcpProxy:
    """127.0.0.1:<port> → target. cut() closes the listener and every open connection (a
    network partition: connects are refused, established sockets die); restore() listens
    again on the same port."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.cuts = 0
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        self.cuts += 1
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    close = cut

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:  # cut meanwhile
                    client.close()
                    upstream.close()
                    return
                self._conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)


class ChromaServer:
    """A `chroma run` server on its own port and folder."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = (workdir / "chroma.log").open("wb")
        chroma = Path(sys.executable).with_name("chroma")
        self.proc = subprocess.Popen(
            [
                str(chroma),
                "run",
                "--path",
                str(workdir / "chroma-server"),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_until(self._alive, 60, "the Chroma server")

    def _alive(self) -> bool:
        assert self.proc.poll() is None, "chroma run exited"
        try:
            return requests.get(f"{self.url}/api/v2/heartbeat", timeout=1).ok
        except requests.ConnectionError:
            return False

    def count(self, collection: str) -> int:
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        client = chromadb.HttpClient(
            host="127.0.0.1", port=self.port, settings=ChromaSettings(anonymized_telemetry=False)
        )
        return int(client.get_collection(collection).count())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()


# --- tickets -----------------------------------------------------------------------------------

_PROBLEMS = [
    "the mobile app crashes when I open the settings page",
    "I was charged twice for order",
    "my parcel has not moved in the tracking for a week, shipment",
    "the CSV export of report is empty except for the header",
    "password reset emails never arrive for account",
    "the dashboard chart for project shows no data since yesterday",
    "please add the VAT number to invoice",
    "two-factor codes are always rejected on login for user",
]


def make_tickets(n: int, source: str = "fault", seed: int = 7) -> list[Ticket]:
    """n tickets with distinct keys; about one in eight repeats an earlier text word for word,
    so some are routed `duplicate` (the fake embedder's vectors are hashes of the text)."""
    rng = random.Random(seed)
    texts: list[str] = []
    tickets = []
    for i in range(n):
        if texts and rng.random() < 0.125:
            body = rng.choice(texts)
        else:
            body = f"{rng.choice(_PROBLEMS)} #{i} (ref {rng.randrange(10**6)})"
            texts.append(body)
        tickets.append(Ticket(source=source, ticket_id=f"T{i:05d}", body=body))
    return tickets


# --- counting ----------------------------------------------------------------------------------


@dataclass
class Tally:
    sent: int
    decided: int
    failed: int
    lost: int
    doubled: int
    detail: dict[str, int] = field(default_factory=dict)

    @property
    def accounted(self) -> int:
        return self.sent - self.lost


def tally(engine: Any, sent: Iterable[TicketKey]) -> Tally:
    """Counts for the sent keys. doubled = extra decision rows for one key + keys both decided
    and failed + decisions matched to their own ticket (a redelivery decided again)."""
    keys = set(sent)
    with Session(engine) as s:
        decided = {
            TicketKey(a, b)
            for a, b in s.execute(select(db.DecisionRow.source, db.DecisionRow.ticket_id))
        }
        failed = {
            TicketKey(a, b)
            for a, b in s.execute(select(db.FailureRow.source, db.FailureRow.ticket_id))
        }
        extra_rows = sum(
            int(n) - 1
            for (n,) in s.execute(
                select(func.count())
                .select_from(db.DecisionRow)
                .group_by(db.DecisionRow.source, db.DecisionRow.ticket_id)
                .having(func.count() > 1)
            )
        )
        self_matched = int(
            s.scalar(
                select(func.count())
                .select_from(db.DecisionRow)
                .where(
                    (db.DecisionRow.matched_source == db.DecisionRow.source)
                    & (db.DecisionRow.matched_ticket_id == db.DecisionRow.ticket_id)
                )
            )
            or 0
        )
        ticket_rows = int(s.scalar(select(func.count()).select_from(db.TicketRow)) or 0)
    both = len(decided & failed)
    return Tally(
        sent=len(keys),
        decided=len(decided & keys),
        failed=len(failed & keys),
        lost=len(keys - decided - failed),
        doubled=extra_rows + both + self_matched,
        detail={
            "extra_decision_rows": extra_rows,
            "decided_and_failed": both,
            "self_matched": self_matched,
            "ticket_rows": ticket_rows,
            "unknown_keys": len((decided | failed) - keys),
        },
    )


def missing(engine: Any, sent: Iterable[TicketKey]) -> list[TicketKey]:
    """The sent keys with neither a decision nor a failure row."""
    with Session(engine) as s:
        done = {
            TicketKey(a, b)
            for model in (db.DecisionRow, db.FailureRow)
            for a, b in s.execute(select(model.source, model.ticket_id))
        }
    return sorted(set(sent) - done)


def wait_accounted(engine: Any, sent: list[TicketKey], timeout: float, what: str) -> float:
    """Seconds until every sent ticket is a decision or a failure row."""
    return wait_until(lambda: tally(engine, sent).lost == 0, timeout, what)


def wait_settled(
    engine: Any, sent: list[TicketKey], depth: Callable[[], int], quiet_s: float, timeout: float
) -> float:
    """Seconds until the last sent ticket got its row: returns once all have one, or once the
    broker has held nothing for quiet_s with no new row (what is missing then never comes)."""
    start = last_change = time.monotonic()
    seen = -1
    while True:
        now = time.monotonic()
        t = tally(engine, sent)
        if t.accounted != seen:
            seen, last_change = t.accounted, now
        if t.lost == 0 or (now - last_change > quiet_s and depth() == 0):
            return last_change - start
        if now - start > timeout:
            raise AssertionError(f"no settled state after {timeout:.0f} s: {t}")
        time.sleep(0.2)


def actions_settled(engine: Engine, n: int) -> bool:
    """Whether the outbox holds ``n`` actions, every one delivered."""
    with Session(engine) as session:
        statuses = list(session.scalars(select(ActionRow.status)))
    return len(statuses) == n and set(statuses) == {"delivered"}


def report(scenario: str, t: Tally, recovery_s: float | None, **extra: Any) -> dict[str, Any]:
    """Print the scenario's line and append it to the results file (JSON lines)."""
    line: dict[str, Any] = {
        "scenario": scenario,
        "mode": "full" if FULL else "ci",
        "sent": t.sent,
        "decided": t.decided,
        "failed": t.failed,
        "lost": t.lost,
        "doubled": t.doubled,
        "recovery_s": None if recovery_s is None else round(recovery_s, 1),
        **extra,
        "detail": t.detail,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(f"\nFAULT {json.dumps(line)}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(line) + "\n")
    return line


def as_dict(t: Tally) -> dict[str, Any]:
    return asdict(t)

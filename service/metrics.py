"""Prometheus metrics of `triage serve`.

Counters of what this process accepted and rejected live in memory. What the workers did
(decisions by route, end-to-end latency) and the queue depth are read at scrape time from
SQL and Redis, so they are right whichever process decided and survive restarts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from sqlalchemy import Engine, case, func, select
from sqlalchemy.orm import Session

from actions.webhook import KIND as WEBHOOK
from tickets import db, outbox

if TYPE_CHECKING:
    from producer.intake import Intake

# End-to-end latency buckets (s): a lone ticket waits ≤ TRIAGE_BATCH_WAIT_MS (0.2 s) plus a
# batch; retries and outages push the tail to minutes.
LATENCY_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# Scrapes come every 15-60 s; the SQL aggregate is cached so a burst of scrapes costs one query.
CACHE_S = 5.0


class _FromStores:
    def __init__(self, engine: Engine, intake: Intake) -> None:
        self.engine, self.intake = engine, intake
        self._cached: tuple[float, Any] | None = None

    def _aggregate(self) -> Any:
        if self._cached and time.monotonic() - self._cached[0] < CACHE_S:
            return self._cached[1]
        d = db.DecisionRow
        cols: list[Any] = [func.count(), func.sum(d.latency_ms)]
        cols += [func.sum(case((d.latency_ms <= b * 1000, 1), else_=0)) for b in LATENCY_BUCKETS_S]
        with Session(self.engine) as s:
            by_route = dict(s.execute(select(d.route, func.count()).group_by(d.route)).all())
            lat = s.execute(select(*cols).where(d.latency_ms.is_not(None))).one()
            failures = int(s.scalar(select(func.count()).select_from(db.FailureRow)) or 0)
            unreadable = int(
                s.scalar(
                    select(func.count()).where(d.unknown_ratio.is_not(None), d.reason.is_not(None))
                )
                or 0
            )
        self._cached = (time.monotonic(), (by_route, lat, failures, unreadable))
        return self._cached[1]

    def collect(self) -> Iterator[Any]:
        by_route, lat, failures, unreadable = self._aggregate()
        routes = CounterMetricFamily("triage_decisions", "Decision rows by route", labels=["route"])
        for route in ("duplicate", "suggest", "manual"):
            routes.add_metric([route], int(by_route.get(route, 0)))
        yield routes
        yield CounterMetricFamily("triage_failures", "Tickets in the failure table", value=failures)
        yield CounterMetricFamily(
            "triage_decisions_unreadable",
            "Tickets routed manual because the model cannot read their language",
            value=unreadable,
        )
        count, total_ms, *cum = lat
        hist = HistogramMetricFamily(
            "triage_end_to_end_latency_seconds", "From acceptance by a producer to the decision row"
        )
        buckets = [(str(b), int(c or 0)) for b, c in zip(LATENCY_BUCKETS_S, cum, strict=True)]
        buckets.append(("+Inf", int(count or 0)))
        hist.add_metric([], buckets, sum_value=(total_ms or 0) / 1000)
        yield hist
        depth = GaugeMetricFamily("triage_queue_depth", "Tickets waiting on the Redis queue")
        try:
            depth.add_metric([], self.intake.queue_depth())
        except Exception:
            depth.add_metric([], float("nan"))  # Redis down: say unknown, do not fail the scrape
        yield depth


class _Actions:
    """The outbox's actions by kind and status, read from SQL at scrape time (cached like
    the decisions). Both labels are bounded: kinds and statuses are the code's own."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._cached: tuple[float, dict[tuple[str, str], int]] | None = None

    def collect(self) -> Iterator[Any]:
        if self._cached is None or time.monotonic() - self._cached[0] >= CACHE_S:
            with Session(self.engine) as s:
                self._cached = (time.monotonic(), outbox.counts(s))
        counts = self._cached[1]
        family = GaugeMetricFamily(
            "triage_actions",
            "Outbox actions (deliveries) by kind and status",
            labels=["kind", "status"],
        )
        for kind in sorted({WEBHOOK, *(k for k, _ in counts)}):
            for status in outbox.STATUSES:
                family.add_metric([kind, status], counts.get((kind, status), 0))
        yield family


# Sources other than the helpdesks that get a series of their own, first come first served
# per process; later ones are counted as "other". The source comes from the client's body:
# unbounded, every new one would be a new series in every scrape, for good.
MAX_EXTRA_SOURCES = 20
OTHER = "other"


class Metrics:
    def __init__(self, engine: Engine, intake: Intake, known: Iterable[str] = ()) -> None:
        self._known = set(known)
        self._extra: set[str] = set()
        self._lock = threading.Lock()
        self.registry = CollectorRegistry()
        self._accepted = Counter(
            "triage_tickets_accepted",
            "Tickets queued by this service",
            ["source"],
            registry=self.registry,
        )
        self._rejected = Counter(
            "triage_tickets_rejected",
            "Requests refused, by reason",
            ["source", "reason"],
            registry=self.registry,
        )
        self.registry.register(_FromStores(engine, intake))  # type: ignore[arg-type]
        self.registry.register(_Actions(engine))  # type: ignore[arg-type]

    def label(self, source: str) -> str:
        """The source's label: a known source, one of the first MAX_EXTRA_SOURCES others, or
        "other"."""
        if source in self._known:
            return source
        with self._lock:
            if source in self._extra:
                return source
            if len(self._extra) < MAX_EXTRA_SOURCES:
                self._extra.add(source)
                return source
        return OTHER

    def accepted(self, source: str, n: int = 1) -> None:
        if n:
            self._accepted.labels(self.label(source)).inc(n)

    def rejected(self, source: str, reason: str) -> None:
        self._rejected.labels(self.label(source), reason).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

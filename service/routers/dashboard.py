"""The built-in dashboard of `triage serve`: ``/dashboard``, behind a ``read`` token.

- ``GET  /dashboard``            the page (401 and a small sign-in form without a session)
- ``GET  /dashboard?token=T``    signs in with a read token once: sets the session cookie and
                                 redirects to ``/dashboard``, so the token leaves the address bar
- ``POST /dashboard/login``      the sign-in form (``token=T``), same effect
- ``POST /dashboard/logout``     clears the cookie
- ``GET  /dashboard/data``       the numbers as JSON; the page fetches it every 5 s
- ``GET  /dashboard/clusters/{source}/{ticket_id}``  one duplicate cluster's tickets

A browser cannot send a bearer header when it navigates, hence the cookie: HttpOnly,
SameSite=Strict, scoped to ``/dashboard``, valid 12 hours, and not the token itself but an
HMAC of an expiry time keyed by the token (a stolen cookie is no API token, and removing the
token from TRIAGE_API_TOKENS ends its sessions). ``Authorization: Bearer`` works everywhere
too, for scripts. The token never appears in a page.

Every number comes from the BI views of migration 0004 (``triage_routes_hourly``,
``triage_routes_daily``, ``triage_duplicate_clusters``, ``triage_score_distribution``,
``triage_failures_by_reason``), so the page, Grafana and Metabase agree. The cluster page
lists the cluster's decisions from ``triage_decisions``. The page is server-rendered HTML;
a small inline script draws the charts as inline SVG (no CDN, no build step) and refreshes
them. Values carry ``data-testid`` attributes (tests read them in a real browser).
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, quote

import redis
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from sqlalchemy import DateTime, Engine, Float, Integer, String, bindparam, column, func, select
from sqlalchemy import table as sql_table
from sqlalchemy.orm import Session

from config.settings import Settings
from tickets import db
from worker.routing import Thresholds

logger = logging.getLogger(__name__)

ROUTES = ("duplicate", "suggest", "manual")
COOKIE = "triage_dashboard"
SESSION_S = 12 * 3600
HOURS = 48  # the time series covers at most the last 48 hours
TOP_CLUSTERS = 10
MEMBERS_SHOWN = 500
REFRESH_MS = 5000
CACHE_S = 2.0  # several open pages cost one set of queries per CACHE_S
MAX_FORM_BYTES = 8192
# Where a sign-in may send the browser back to, relative to /dashboard.
NEXT_PATH = re.compile(r"(/clusters/[A-Za-z0-9_.~%-]+/[A-Za-z0-9_.~%-]+)?")

# --- the views (tickets/migrations/versions/0004_bi_views.py) -------------------------------
# Typed, so SQLite's text timestamps come back as datetimes like PostgreSQL's.

_TS = DateTime(timezone=True)
ROUTES_HOURLY = sql_table(
    "triage_routes_hourly",
    column("bucket", _TS),
    column("queue", String()),
    column("route", String()),
    column("decisions", Integer()),
    column("avg_score", Float()),
)
ROUTES_DAILY = sql_table(
    "triage_routes_daily",
    column("bucket", _TS),
    column("queue", String()),
    column("route", String()),
    column("decisions", Integer()),
    column("avg_score", Float()),
)
CLUSTERS = sql_table(
    "triage_duplicate_clusters",
    column("canonical_source", String()),
    column("canonical_ticket_id", String()),
    column("size", Integer()),
    column("duplicates", Integer()),
    column("first_seen", _TS),
    column("last_seen", _TS),
    column("subject", String()),
    column("queue", String()),
)
SCORES = sql_table(
    "triage_score_distribution",
    column("route", String()),
    column("bucket_index", Integer()),
    column("score_low", Float()),
    column("score_high", Float()),
    column("decisions", Integer()),
)
FAILURES = sql_table(
    "triage_failures_by_reason",
    column("error_type", String()),
    column("failures", Integer()),
    column("last_failed_at", _TS),
)


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes for what was written as UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else _utc(value).isoformat().replace("+00:00", "Z")


def _bucket_at(engine: Engine, at: datetime) -> Any:
    """A bound value comparable with a view's ``bucket`` (SQLite compares its text form)."""
    if engine.dialect.name == "sqlite":
        return bindparam("since", at.strftime("%Y-%m-%d %H:%M:%S"), type_=String())
    return bindparam("since", at, type_=_TS)


# --- the numbers ---------------------------------------------------------------------------


def read_dashboard(
    engine: Engine,
    *,
    thresholds: Thresholds,
    queue_depth: Callable[[], int],
    now: datetime | None = None,
) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready data (the body of ``/dashboard/data``)."""
    now = _utc(now or datetime.now(UTC))
    end = now.replace(minute=0, second=0, microsecond=0)
    earliest = end - timedelta(hours=HOURS - 1)
    with Session(engine) as s:
        totals = {
            str(route): int(n or 0)
            for route, n in s.execute(
                select(ROUTES_DAILY.c.route, func.sum(ROUTES_DAILY.c.decisions)).group_by(
                    ROUTES_DAILY.c.route
                )
            )
        }
        hourly_rows = s.execute(
            select(
                ROUTES_HOURLY.c.bucket, ROUTES_HOURLY.c.route, func.sum(ROUTES_HOURLY.c.decisions)
            )
            .where(ROUTES_HOURLY.c.bucket >= _bucket_at(engine, earliest))
            .group_by(ROUTES_HOURLY.c.bucket, ROUTES_HOURLY.c.route)
        ).all()
        clusters = s.execute(
            select(CLUSTERS)
            .order_by(
                CLUSTERS.c.size.desc(),
                CLUSTERS.c.last_seen.desc(),
                CLUSTERS.c.canonical_source,
                CLUSTERS.c.canonical_ticket_id,
            )
            .limit(TOP_CLUSTERS)
        ).all()
        scores = s.execute(select(SCORES.c.route, SCORES.c.bucket_index, SCORES.c.decisions)).all()
        failures = s.execute(
            select(FAILURES).order_by(FAILURES.c.failures.desc(), FAILURES.c.error_type)
        ).all()

    # Hourly series: the last 48 hours, or since the first decision if that is more recent.
    counts: dict[datetime, dict[str, int]] = {}
    for bucket, route, n in hourly_rows:
        counts.setdefault(_utc(bucket), {})[str(route)] = int(n or 0)
    in_window = sum(sum(c.values()) for c in counts.values())
    older = in_window < sum(totals.values())  # decisions before the window exist
    # nothing before the window: start at the first decision (or now, if there is none yet)
    start = earliest if older else (max(earliest, min(counts)) if counts else end)
    last = max([end, *counts])
    buckets = [
        start + timedelta(hours=i) for i in range(int((last - start) / timedelta(hours=1)) + 1)
    ]
    hourly = {
        "start": _iso(start),
        "end": _iso(last),
        "buckets": [_iso(b) for b in buckets],
        "routes": {r: [counts.get(b, {}).get(r, 0) for b in buckets] for r in ROUTES},
    }

    # Score histogram, 0.05 wide, from 0 (or lower: negative scores, a low threshold) to 1.
    by_bin: dict[int, dict[str, int]] = {}
    for route, index, n in scores:
        by_bin.setdefault(int(index), {})[str(route)] = int(n or 0)
    low = min([0, math.floor(thresholds.suggest * 20), *by_bin])
    bins = [
        {
            "index": i,
            "low": i / 20,
            "high": (i + 1) / 20,
            "counts": {r: by_bin.get(i, {}).get(r, 0) for r in ROUTES},
        }
        for i in range(low, 20)
    ]
    scored = {r: sum(b.get(r, 0) for b in by_bin.values()) for r in ROUTES}

    try:
        depth: int | None = int(queue_depth())
    except (redis.RedisError, OSError) as exc:
        logger.warning("dashboard: queue depth unknown: %s", exc)
        depth = None

    return {
        "generated_at": _iso(now),
        "thresholds": {"duplicate": thresholds.duplicate, "suggest": thresholds.suggest},
        "totals": {
            "decisions": sum(totals.values()),
            "routes": {r: totals.get(r, 0) for r in ROUTES},
            "failures": sum(int(f.failures) for f in failures),
            "no_score": {r: totals.get(r, 0) - scored[r] for r in ROUTES},
        },
        "queue_depth": depth,
        "hourly": hourly,
        "histogram": {"width": 0.05, "bins": bins},
        "clusters": [
            {
                "source": c.canonical_source,
                "ticket_id": c.canonical_ticket_id,
                "size": int(c.size),
                "first_seen": _iso(c.first_seen),
                "last_seen": _iso(c.last_seen),
                "subject": c.subject,
                "queue": c.queue,
            }
            for c in clusters
        ],
        "failures": [
            {
                "error_type": f.error_type,
                "failures": int(f.failures),
                "last_failed_at": _iso(f.last_failed_at),
            }
            for f in failures
        ],
    }


def read_cluster(engine: Engine, source: str, ticket_id: str) -> dict[str, Any] | None:
    """One cluster (from the view) and its tickets, the root first; None if it has none."""
    with Session(engine) as s:
        row = s.execute(
            select(CLUSTERS).where(
                CLUSTERS.c.canonical_source == source, CLUSTERS.c.canonical_ticket_id == ticket_id
            )
        ).first()
        if row is None:
            return None
        d = db.DecisionRow
        members = list(
            s.scalars(
                select(d)
                .where(d.canonical_source == source, d.canonical_ticket_id == ticket_id)
                .order_by((d.route == "duplicate"), d.decided_at, d.id)
                .limit(MEMBERS_SHOWN)
            )
        )
        tickets = [
            {
                "source": m.source,
                "ticket_id": m.ticket_id,
                "route": m.route,
                "score": m.score,
                "matched": f"{m.matched_source}:{m.matched_ticket_id}"
                if m.matched_ticket_id is not None
                else None,
                "decided_at": _iso(m.decided_at),
                "subject": m.subject,
                "root": m.source == source and m.ticket_id == ticket_id,
            }
            for m in members
        ]
    return {
        "source": source,
        "ticket_id": ticket_id,
        "size": int(row.size),
        "first_seen": _iso(row.first_seen),
        "last_seen": _iso(row.last_seen),
        "subject": row.subject,
        "queue": row.queue,
        "tickets": tickets,
        "root_decided": any(t["root"] for t in tickets),
    }


# --- sessions ------------------------------------------------------------------------------


def _read_tokens(settings: Settings) -> list[str]:
    return [t for t, scopes in settings.api_tokens.items() if "read" in scopes]


def is_read_token(settings: Settings, token: str) -> bool:
    ok = False
    for known in _read_tokens(settings):
        # every token compared, in constant time, so timing says nothing about which
        ok |= hmac.compare_digest(known.encode(), token.encode())
    return ok and bool(token)


def _mac(token: str, expires: int) -> str:
    return hmac.new(
        token.encode(), f"triage-dashboard|{expires}".encode(), hashlib.sha256
    ).hexdigest()


def session_cookie(token: str, now: float | None = None) -> str:
    expires = int(now if now is not None else time.time()) + SESSION_S
    return f"{expires}.{_mac(token, expires)}"


def session_valid(settings: Settings, value: str, now: float | None = None) -> bool:
    expires_s, _, mac = value.partition(".")
    if not expires_s.isdigit() or not mac:
        return False
    expires = int(expires_s)
    if expires < (now if now is not None else time.time()):
        return False
    ok = False
    for known in _read_tokens(settings):
        ok |= hmac.compare_digest(_mac(known, expires).encode(), mac.encode())
    return ok


# --- HTML ----------------------------------------------------------------------------------

STYLE = """
:root { --dup: #c92a2a; --sug: #e67700; --man: #1c7ed6; --ink: #212529; --muted: #868e96;
        --line: #dee2e6; --bg: #f8f9fa; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--ink); background: var(--bg); }
header { display: flex; align-items: center; gap: 16px; padding: 10px 20px; background: #fff;
         border-bottom: 1px solid var(--line); }
header h1 { font-size: 18px; margin: 0; }
header .status { color: var(--muted); }
header form { margin-left: auto; }
main { padding: 16px 20px; max-width: 1320px; margin: 0 auto; }
.tiles { display: grid; grid-template-columns: repeat(6, 1fr); gap: 12px; margin-bottom: 16px; }
.tile, .card { background: #fff; border: 1px solid var(--line); border-radius: 6px; }
.tile { padding: 10px 14px; }
.tile .label { display: block; color: var(--muted); font-size: 12px; text-transform: uppercase; }
.tile .value { font-size: 26px; font-weight: 600; }
.tile.duplicate .value { color: var(--dup); } .tile.suggest .value { color: var(--sug); }
.tile.manual .value { color: var(--man); }
.card { padding: 12px 16px; margin-bottom: 16px; }
.card h2 { font-size: 15px; margin: 0 0 8px; }
.card h2 small { color: var(--muted); font-weight: normal; }
.row { display: grid; grid-template-columns: 5fr 6fr; gap: 16px; }
svg { width: 100%; height: auto; display: block; }
svg text { font-size: 11px; fill: var(--muted); }
svg .grid { stroke: var(--line); }
.legend { display: flex; gap: 14px; color: var(--muted); font-size: 12px; }
.legend i { display: inline-block; width: 10px; height: 10px; margin-right: 4px; }
.legend .duplicate i { background: var(--dup); } .legend .suggest i { background: var(--sug); }
.legend .manual i { background: var(--man); }
table { width: 100%; border-collapse: collapse; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line);
         white-space: nowrap; }
td:first-child { white-space: normal; }
th { color: var(--muted); font-weight: normal; font-size: 12px; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.muted { color: var(--muted); }
.route-duplicate { color: var(--dup); } .route-suggest { color: var(--sug); }
.route-manual { color: var(--man); }
.login { max-width: 380px; margin: 80px auto; }
.login input { width: 100%; padding: 8px; margin: 8px 0; font: inherit; }
.error { color: var(--dup); }
@media (max-width: 900px) { .tiles { grid-template-columns: repeat(3, 1fr); } .row { display: block; } }
"""

SCRIPT = r"""
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var ROUTES = ["manual", "suggest", "duplicate"];  // stacking order, bottom up
  var COLORS = {duplicate: "#c92a2a", suggest: "#e67700", manual: "#1c7ed6"};
  var body = document.body;
  var base = body.getAttribute("data-base");
  var refreshes = 0;

  function byId(id) { return document.querySelector('[data-testid="' + id + '"]'); }
  function setText(id, value) { byId(id).textContent = String(value); }
  function node(ns, tag, attrs, text) {
    var e = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
    for (var k in attrs) { if (attrs[k] !== null && attrs[k] !== undefined) e.setAttribute(k, String(attrs[k])); }
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function svg(tag, attrs, text) { return node(NS, tag, attrs, text); }
  function html(tag, attrs, text) { return node(null, tag, attrs, text); }
  function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); return e; }
  function when(iso) { return iso ? iso.slice(0, 16).replace("T", " ") : "\u2013"; }
  function short(iso) { return iso ? iso.slice(5, 16).replace("T", " ") : "\u2013"; }
  function niceMax(n) {
    if (n <= 4) return Math.max(n, 1);
    var p = Math.pow(10, Math.floor(Math.log10(n))), m = n / p;
    var steps = [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10];
    for (var i = 0; i < steps.length; i++) { if (m <= steps[i]) return steps[i] * p; }
    return 10 * p;
  }
  function yAxis(g, x0, x1, top, bottom, max) {
    [0, max / 2, max].forEach(function (v) {
      var y = bottom - (bottom - top) * v / max;
      g.appendChild(svg("line", {x1: x0, x2: x1, y1: y, y2: y, "class": "grid"}));
      g.appendChild(svg("text", {x: x0 - 6, y: y + 4, "text-anchor": "end"}, Number.isInteger(v) ? v : v.toFixed(1)));
    });
  }

  function drawHourly(h) {
    var el = clear(byId("hourly-chart"));
    var W = 1200, H = 170, L = 44, R = 10, T = 10, B = 26;
    el.setAttribute("viewBox", "0 0 " + W + " " + H);
    var n = h.buckets.length, band = (W - L - R) / n, bw = Math.max(1, Math.min(band * 0.8, 40));
    var totals = h.buckets.map(function (_, i) { return ROUTES.reduce(function (s, r) { return s + h.routes[r][i]; }, 0); });
    var max = niceMax(Math.max.apply(null, totals.concat([1])));
    yAxis(el, L, W - R, T, H - B, max);
    var step = Math.ceil(n / 12);
    h.buckets.forEach(function (bucket, i) {
      var x = L + i * band + (band - bw) / 2, y = H - B;
      ROUTES.forEach(function (r) {
        var c = h.routes[r][i];
        if (!c) return;
        var bh = (H - B - T) * c / max;
        y -= bh;
        var rect = svg("rect", {x: x, y: y, width: bw, height: bh, fill: COLORS[r],
          "data-testid": "hourly-bar", "data-bucket": bucket, "data-route": r, "data-count": c});
        rect.appendChild(svg("title", {}, when(bucket) + " UTC \u00b7 " + r + ": " + c));
        el.appendChild(rect);
      });
      if (i % step === 0) {
        var hour = bucket.slice(11, 16), label = (i === 0 || hour === "00:00") ? bucket.slice(5, 10) + " " + hour : hour;
        el.appendChild(svg("text", {x: L + i * band + band / 2, y: H - B + 16, "text-anchor": "middle"}, label));
      }
    });
    setText("hourly-range", when(h.start) + " \u2192 " + when(h.end) + " UTC, per hour");
  }

  function drawHistogram(hist, th) {
    var el = clear(byId("score-histogram"));
    var W = 560, H = 260, L = 44, R = 12, T = 40, B = 34;
    el.setAttribute("viewBox", "0 0 " + W + " " + H);
    var bins = hist.bins, lo = bins[0].low, hi = bins[bins.length - 1].high;
    function sx(v) { return L + (W - L - R) * (v - lo) / (hi - lo); }
    var totals = bins.map(function (b) { return ROUTES.reduce(function (s, r) { return s + b.counts[r]; }, 0); });
    var max = niceMax(Math.max.apply(null, totals.concat([1])));
    yAxis(el, L, W - R, T, H - B, max);
    bins.forEach(function (b) {
      var x = sx(b.low) + 1, bw = Math.max(1, sx(b.high) - sx(b.low) - 2), y = H - B;
      ROUTES.forEach(function (r) {
        var c = b.counts[r];
        if (!c) return;
        var bh = (H - B - T) * c / max;
        y -= bh;
        var rect = svg("rect", {x: x, y: y, width: bw, height: bh, fill: COLORS[r],
          "data-testid": "hist-bar", "data-low": b.low.toFixed(2), "data-route": r, "data-count": c});
        rect.appendChild(svg("title", {}, b.low.toFixed(2) + "\u2013" + b.high.toFixed(2) + " \u00b7 " + r + ": " + c));
        el.appendChild(rect);
      });
    });
    for (var t = Math.ceil(lo * 10 - 1e-9); t <= hi * 10 + 1e-9; t++) {
      el.appendChild(svg("text", {x: sx(t / 10), y: H - B + 16, "text-anchor": "middle"}, (t / 10).toFixed(1)));
    }
    el.appendChild(svg("text", {x: (W + L) / 2, y: H - 4, "text-anchor": "middle"}, "best cosine similarity"));
    // a label line per threshold above the plot, centred on its line, kept inside the chart
    [["suggest", th.suggest], ["duplicate", th.duplicate]].forEach(function (p, k) {
      var x = sx(p[1]), y = 13 + 13 * k;
      el.appendChild(svg("line", {x1: x, x2: x, y1: y + 3, y2: H - B, stroke: COLORS[p[0]],
        "stroke-width": 2, "stroke-dasharray": "5 3", "data-testid": "threshold-line",
        "data-kind": p[0], "data-value": p[1]}));
      var label = svg("text", {x: x, y: y, "text-anchor": "middle", fill: COLORS[p[0]],
        "data-testid": "threshold-label-" + p[0]}, p[0] + " \u2265 " + p[1].toFixed(2));
      el.appendChild(label);
      var w = label.getComputedTextLength ? label.getComputedTextLength() : 0;
      label.setAttribute("x", String(Math.min(Math.max(x, L + w / 2), W - R - w / 2)));
    });
    var none = ROUTES.reduce(function (s, r) { return s + hist.noScore[r]; }, 0);
    setText("no-score-total", none);
  }

  function drawClusters(clusters) {
    var tb = clear(byId("clusters-body"));
    if (!clusters.length) {
      tb.appendChild(html("tr", {}, "")).appendChild(html("td", {colspan: 5, "class": "muted"}, "No duplicates yet."));
      return;
    }
    clusters.forEach(function (c) {
      var tr = html("tr", {"data-testid": "cluster-row", "data-source": c.source, "data-ticket-id": c.ticket_id});
      var td = html("td");
      td.appendChild(html("a", {href: base + "/clusters/" + encodeURIComponent(c.source) + "/" + encodeURIComponent(c.ticket_id),
        "data-testid": "cluster-link"}, c.subject || "(no subject)"));
      tr.appendChild(td);
      tr.appendChild(html("td", {"data-testid": "cluster-key"}, c.source + ":" + c.ticket_id));
      tr.appendChild(html("td", {"class": "num", "data-testid": "cluster-size"}, c.size));
      tr.appendChild(html("td", {"data-testid": "cluster-first-seen", "data-value": c.first_seen, title: when(c.first_seen)}, short(c.first_seen)));
      tr.appendChild(html("td", {"data-testid": "cluster-last-seen", "data-value": c.last_seen, title: when(c.last_seen)}, short(c.last_seen)));
      tb.appendChild(tr);
    });
  }

  function drawFailures(failures) {
    var tb = clear(byId("failures-body"));
    if (!failures.length) {
      tb.appendChild(html("tr")).appendChild(html("td", {colspan: 3, "class": "muted"}, "No failures."));
      return;
    }
    failures.forEach(function (f) {
      var tr = html("tr", {"data-testid": "failure-row", "data-error-type": f.error_type});
      tr.appendChild(html("td", {"data-testid": "failure-type"}, f.error_type));
      tr.appendChild(html("td", {"class": "num", "data-testid": "failure-count"}, f.failures));
      tr.appendChild(html("td", {"data-testid": "failure-last", "data-value": f.last_failed_at}, when(f.last_failed_at)));
      tb.appendChild(tr);
    });
  }

  function render(d) {
    setText("total-decisions", d.totals.decisions);
    ["duplicate", "suggest", "manual"].forEach(function (r) { setText("route-total-" + r, d.totals.routes[r]); });
    setText("failures-total", d.totals.failures);
    setText("queue-depth", d.queue_depth === null ? "unknown" : d.queue_depth);
    setText("threshold-duplicate", d.thresholds.duplicate.toFixed(2));
    setText("threshold-suggest", d.thresholds.suggest.toFixed(2));
    drawHourly(d.hourly);
    drawHistogram({bins: d.histogram.bins, noScore: d.totals.no_score}, d.thresholds);
    drawClusters(d.clusters);
    drawFailures(d.failures);
    setText("updated-at", d.generated_at.slice(0, 19).replace("T", " ") + " UTC");
  }

  var timer = null;
  function status(text) { setText("live-status", text); }
  function refresh() {
    fetch(base + "/data", {credentials: "same-origin", cache: "no-store", headers: {Accept: "application/json"}})
      .then(function (r) {
        if (r.status === 401) { clearInterval(timer); status("signed out \u2013 reload to sign in"); return null; }
        if (!r.ok) throw new Error("HTTP " + r.status);
        return r.json();
      })
      .then(function (d) {
        if (!d) return;
        render(d);
        refreshes += 1;
        body.setAttribute("data-refreshes", String(refreshes));
        status("live \u00b7 every " + (REFRESH_MS / 1000) + " s");
      })
      .catch(function (e) { status("stale (" + e.message + ")"); });
  }
  var REFRESH_MS = Number(body.getAttribute("data-refresh-ms"));
  render(JSON.parse(document.getElementById("initial-data").textContent));
  refresh();
  timer = setInterval(refresh, REFRESH_MS);
})();
"""


def _page(title: str, nonce: str, content: str, body_attrs: str = "") -> str:
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<meta name='referrer' content='no-referrer'>"
        f"<title>{html.escape(title)}</title><style nonce='{nonce}'>{STYLE}</style></head>"
        f"<body{body_attrs}>{content}</body></html>\n"
    )


def _headers(nonce: str) -> dict[str, str]:
    return {
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Content-Security-Policy": (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
            "connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; "
            "frame-ancestors 'none'"
        ),
    }


def _login_page(base: str, message: str | None, nonce: str, next_path: str = "") -> str:
    error = (
        f"<p class='error' data-testid='login-error'>{html.escape(message)}</p>" if message else ""
    )
    return _page(
        "ticket-triage: sign in",
        nonce,
        "<main class='login card'><h1>ticket-triage dashboard</h1>"
        "<p class='muted'>Sign in with a token that has the <code>read</code> scope "
        "(TRIAGE_API_TOKENS).</p>"
        f"{error}<form method='post' action='{html.escape(base)}/login' data-testid='login-form'>"
        "<label for='token'>Read token</label>"
        "<input id='token' name='token' type='password' autocomplete='off' required autofocus>"
        f"<input type='hidden' name='next' value='{html.escape(next_path)}'>"
        "<button type='submit'>Sign in</button></form></main>",
    )


def _tile(label: str, testid: str, css: str = "") -> str:
    return (
        f"<div class='tile {css}'><span class='label'>{label}</span>"
        f"<span class='value' data-testid='{testid}'>\u2026</span></div>"
    )


_LEGEND = (
    "<div class='legend'>"
    + "".join(f"<span class='{r}'><i></i>{r}</span>" for r in ROUTES)
    + "</div>"
)


def _dashboard_page(base: str, data: dict[str, Any], nonce: str) -> str:
    # JSON inside <script>: no '<', '>' or '&' can close the element or start a comment.
    initial = (
        json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    )
    b = html.escape(base)
    content = (
        "<header><h1>ticket-triage</h1>"
        "<span class='status' data-testid='live-status'>loading\u2026</span>"
        f"<form method='post' action='{b}/logout'><button type='submit'>Sign out</button></form>"
        "</header><main>"
        "<noscript><p>The charts need JavaScript; the numbers are at "
        f"<a href='{b}/data'>{b}/data</a>.</p></noscript>"
        "<section class='tiles'>"
        + _tile("Decisions", "total-decisions")
        + _tile("duplicate", "route-total-duplicate", "duplicate")
        + _tile("suggest", "route-total-suggest", "suggest")
        + _tile("manual", "route-total-manual", "manual")
        + _tile("Queue depth", "queue-depth")
        + _tile("Failures", "failures-total")
        + "</section>"
        "<section class='card'><h2>Decisions per route over time "
        "<small data-testid='hourly-range'></small></h2>"
        "<svg data-testid='hourly-chart' role='img' aria-label='decisions per hour'></svg>"
        f"{_LEGEND}</section>"
        "<div class='row'><div><section class='card'><h2>Score distribution "
        "<small>cosine of each decision's matched ticket, 0.05 wide; thresholds: duplicate "
        "<span data-testid='threshold-duplicate'></span>, suggest "
        "<span data-testid='threshold-suggest'></span></small></h2>"
        "<svg data-testid='score-histogram' role='img' aria-label='score histogram'></svg>"
        f"{_LEGEND}<p class='muted'><span data-testid='no-score-total'></span> decision(s) "
        "had no history to compare with (no score).</p></section>"
        "<section class='card'><h2>Failures by type <small>tickets in the failure "
        "table</small></h2><table><thead><tr><th>type</th>"
        "<th class='num'>tickets</th><th>last (UTC)</th></tr></thead>"
        "<tbody data-testid='failures-body'></tbody></table></section></div>"
        "<section class='card'><h2>Top duplicate clusters <small>root ticket and its "
        "duplicates; click one for its tickets; times UTC</small></h2><table><thead><tr>"
        "<th>root subject</th><th>root ticket</th><th class='num'>size</th>"
        "<th>first seen</th><th>last seen</th></tr></thead>"
        "<tbody data-testid='clusters-body'></tbody></table></section></div>"
        "<p class='muted'>Updated <span data-testid='updated-at'></span>. "
        "Read from the SQL views triage_routes_hourly, triage_routes_daily, "
        "triage_duplicate_clusters, triage_score_distribution and "
        "triage_failures_by_reason.</p></main>"
        f"<script type='application/json' id='initial-data'>{initial}</script>"
        f"<script nonce='{nonce}'>{SCRIPT}</script>"
    )
    return _page(
        "ticket-triage dashboard",
        nonce,
        content,
        f" data-base='{b}' data-refresh-ms='{REFRESH_MS}' data-refreshes='0'",
    )


DASH = "\u2013"


def cluster_path(source: str, ticket_id: str) -> str:
    """A cluster page's path under /dashboard (both parts fully percent-encoded)."""
    return f"/clusters/{quote(source, safe='')}/{quote(ticket_id, safe='')}"


def _fmt_score(score: float | None) -> str:
    return DASH if score is None else f"{score:.3f}"


def _cluster_page(base: str, cluster: dict[str, Any], nonce: str) -> str:
    e = html.escape
    rows = []
    if not cluster["root_decided"]:
        rows.append(
            "<tr data-testid='member-row' data-root='true'>"
            f"<td>{e(cluster['source'])}:{e(cluster['ticket_id'])}</td>"
            "<td data-testid='member-route' class='muted'>history</td>"
            "<td class='num' data-testid='member-score'>\u2013</td><td></td><td></td>"
            f"<td>{e(cluster['subject'] or '')}</td></tr>"
        )
    for t in cluster["tickets"]:
        rows.append(
            f"<tr data-testid='member-row' data-root='{'true' if t['root'] else 'false'}' "
            f"data-ticket-id='{e(t['ticket_id'])}'>"
            f"<td>{e(t['source'])}:{e(t['ticket_id'])}{' <b>(root)</b>' if t['root'] else ''}</td>"
            f"<td data-testid='member-route' class='route-{e(t['route'])}'>{e(t['route'])}</td>"
            f"<td class='num' data-testid='member-score'>{_fmt_score(t['score'])}</td>"
            f"<td>{e(t['matched'] or '')}</td>"
            f"<td>{e((t['decided_at'] or '')[:19].replace('T', ' '))}</td>"
            f"<td>{e(t['subject'] or '')}</td></tr>"
        )
    shown = len(rows)
    more = (
        f"<p class='muted'>Showing the first {shown} of {cluster['size']} tickets.</p>"
        if shown < cluster["size"]
        else ""
    )
    content = (
        f"<header><h1><a href='{e(base)}'>ticket-triage</a> \u203a cluster</h1></header><main>"
        f"<section class='card'><h2 data-testid='cluster-subject'>{e(cluster['subject'] or '(no subject)')}</h2>"
        f"<p>Root <b data-testid='cluster-root'>{e(cluster['source'])}:{e(cluster['ticket_id'])}</b>"
        f" \u00b7 queue {e(cluster['queue'] or DASH)} \u00b7 size "
        f"<b data-testid='cluster-size'>{cluster['size']}</b> \u00b7 first seen "
        f"{e((cluster['first_seen'] or '')[:19].replace('T', ' '))} \u00b7 last seen "
        f"{e((cluster['last_seen'] or '')[:19].replace('T', ' '))} UTC</p>"
        "<table><thead><tr><th>ticket</th><th>route</th><th class='num'>cosine</th>"
        "<th>matched</th><th>decided (UTC)</th><th>subject</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>{more}"
        f"<p><a href='{e(base)}'>\u2190 back to the dashboard</a></p></section></main>"
    )
    return _page("ticket-triage: cluster", nonce, content)


# --- routes --------------------------------------------------------------------------------


def dashboard_thresholds(settings: Settings) -> Thresholds:
    """The thresholds drawn on the histogram: the thresholds file's default pair when one is
    configured (per-queue pairs are not drawn), else TRIAGE_DUPLICATE/SUGGEST_THRESHOLD."""
    if settings.thresholds_file is not None:
        from worker.thresholds import load_thresholds

        try:
            return load_thresholds(settings.thresholds_file).default
        except ValueError as exc:
            logger.warning("dashboard: %s; drawing the configured thresholds instead", exc)
    return Thresholds(settings.duplicate_threshold, settings.suggest_threshold)


class RedactToken(logging.Filter):
    """uvicorn's access log prints query strings: hide the ``token=`` of a sign-in link."""

    PATTERN = re.compile(r"([?&])token=[^&\s]*")

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and any(isinstance(a, str) and "token=" in a for a in args):
            record.args = tuple(
                self.PATTERN.sub(r"\1token=[hidden]", a) if isinstance(a, str) else a for a in args
            )
        return True


class _Cached:
    """The data of the last CACHE_S seconds, shared by every open page."""

    def __init__(self, produce: Callable[[], dict[str, Any]]) -> None:
        self._produce = produce
        self._lock = threading.Lock()
        self._value: tuple[float, dict[str, Any]] | None = None

    def get(self) -> dict[str, Any]:
        with self._lock:
            if self._value is None or time.monotonic() - self._value[0] >= CACHE_S:
                self._value = (time.monotonic(), self._produce())
            return self._value[1]


def mount_dashboard(app: FastAPI) -> None:
    """Add the dashboard's routes to the app built by ``create_api`` (its state holds the
    settings, the engine and the intake)."""
    settings: Settings = app.state.settings
    engine: Engine = app.state.engine
    intake = app.state.intake
    thresholds = dashboard_thresholds(settings)
    access_log = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactToken) for f in access_log.filters):
        access_log.addFilter(RedactToken())
    data = _Cached(
        lambda: read_dashboard(engine, thresholds=thresholds, queue_depth=intake.queue_depth)
    )

    def base_of(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/") + "/dashboard"

    def signed_in(request: Request) -> bool:
        authorization = request.headers.get("authorization")
        if authorization is not None:
            scheme, _, token = authorization.partition(" ")
            return scheme.lower() == "bearer" and is_read_token(settings, token.strip())
        cookie = request.cookies.get(COOKIE)
        return cookie is not None and session_valid(settings, cookie)

    def html_response(body: str, nonce: str, status: int = 200) -> HTMLResponse:
        return HTMLResponse(body, status_code=status, headers=_headers(nonce))

    def login(request: Request, message: str | None, next_path: str = "") -> HTMLResponse:
        nonce = secrets.token_urlsafe(16)
        body = _login_page(base_of(request), message, nonce, next_path)
        response = html_response(body, nonce, 401)
        response.headers["WWW-Authenticate"] = "Bearer"
        return response

    def start_session(request: Request, token: str, next_path: str = "") -> Response:
        base = base_of(request)
        # only back to a dashboard page: never an open redirect
        target = base + (next_path if NEXT_PATH.fullmatch(next_path) else "")
        response = RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})
        response.headers["Referrer-Policy"] = "no-referrer"
        response.set_cookie(
            COOKIE,
            session_cookie(token),
            max_age=SESSION_S,
            path=base,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    def gate(request: Request, next_path: str) -> Response | None:
        """None when signed in; else the answer: a session from ``?token=`` (redirected to
        the same page without it, so the token leaves the address bar and the history), or
        401 with the sign-in form."""
        token = request.query_params.get("token")
        if token is not None:
            if is_read_token(settings, token):
                return start_session(request, token, next_path)
            return login(request, "That is not a token with the read scope.", next_path)
        if not signed_in(request):
            return login(request, None, next_path)
        return None

    def page(request: Request) -> Response:
        refused = gate(request, "")
        if refused is not None:
            return refused
        nonce = secrets.token_urlsafe(16)
        return html_response(_dashboard_page(base_of(request), data.get(), nonce), nonce)

    async def login_form(request: Request) -> Response:
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_FORM_BYTES:
                return login(request, "That form was too large.")
        fields = parse_qs(raw.decode("utf-8", "replace"))
        token = (fields.get("token") or [""])[0].strip()
        next_path = (fields.get("next") or [""])[0]
        if is_read_token(settings, token):
            return start_session(request, token, next_path)
        return login(request, "That is not a token with the read scope.", next_path)

    def logout(request: Request) -> Response:
        base = base_of(request)
        response = RedirectResponse(base, status_code=303)
        response.delete_cookie(COOKIE, path=base, httponly=True, samesite="strict")
        return response

    def data_json(request: Request) -> Response:
        if not signed_in(request):
            return JSONResponse(
                {"detail": "sign in at /dashboard, or send a bearer token with the read scope"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer", "Cache-Control": "no-store"},
            )
        return JSONResponse(data.get(), headers={"Cache-Control": "no-store"})

    def cluster(request: Request, source: str, ticket_id: str) -> Response:
        refused = gate(request, cluster_path(source, ticket_id))
        if refused is not None:
            return refused
        nonce = secrets.token_urlsafe(16)
        found = (
            read_cluster(engine, source, ticket_id)
            if len(source) <= 64 and len(ticket_id) <= 255
            else None
        )
        if found is None:
            body = _page(
                "ticket-triage: no such cluster",
                nonce,
                f"<main class='card'><p>No duplicate cluster has the root "
                f"{html.escape(source)}:{html.escape(ticket_id)}.</p>"
                f"<p><a href='{html.escape(base_of(request))}'>\u2190 back</a></p></main>",
            )
            return html_response(body, nonce, 404)
        return html_response(_cluster_page(base_of(request), found, nonce), nonce)

    hidden: dict[str, Any] = {"include_in_schema": False}
    app.add_api_route("/dashboard", page, methods=["GET"], **hidden)
    app.add_api_route("/dashboard/login", login_form, methods=["POST"], **hidden)
    app.add_api_route("/dashboard/logout", logout, methods=["POST"], **hidden)
    app.add_api_route("/dashboard/data", data_json, methods=["GET"], **hidden)
    app.add_api_route(
        "/dashboard/clusters/{source}/{ticket_id:path}", cluster, methods=["GET"], **hidden
    )


__all__ = [
    "mount_dashboard",
    "read_cluster",
    "read_dashboard",
    "session_cookie",
    "session_valid",
]

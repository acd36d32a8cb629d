"""SQL views for BI tools (Grafana, Metabase, psql) and the built-in dashboard.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27

The views are the stable, documented read surface (docs/api.md, "SQL views for BI tools"); the
same names, columns and meaning on SQLite and PostgreSQL. Times are UTC. A timestamp column
is a ``timestamptz`` on PostgreSQL and, on SQLite, text in SQLite's own datetime format
(``YYYY-MM-DD HH:MM:SS[.ffffff]``, UTC), which SQLite's date functions and SQLAlchemy's
``DateTime`` read as such.

- ``triage_routes_hourly`` / ``triage_routes_daily``: ``bucket`` (start of the UTC hour /
  day), ``queue`` (null when the ticket had none), ``route``, ``decisions``, ``avg_score``
  (over the decisions that have a score).
- ``triage_duplicate_clusters``: one row per canonical (root) ticket that has at least one
  ``duplicate``: ``canonical_source``, ``canonical_ticket_id``, ``size`` (the duplicates plus
  the root), ``duplicates``, ``first_seen`` (the root's decision; for a root loaded as
  ``--backfill`` history, which has no decision, when it was received; never later than the
  first duplicate), ``last_seen`` (the latest duplicate's decision), ``subject`` and
  ``queue`` (the root ticket's).
- ``triage_score_distribution``: ``route``, ``bucket_index`` = floor(score × 20) (a score of
  1 or more counts in the top bucket, 19), ``score_low`` / ``score_high`` (the bucket's
  bounds, width 0.05: low ≤ score < high), ``decisions``. Decisions without a score (no
  history to compare with) are not in it.
- ``triage_failures_by_reason``: ``error_type``, ``failures``, ``last_failed_at``.

Multiples of 0.05 are exact at the bucket edges (floor(k / 20 × 20) = k in IEEE doubles), so
the default thresholds 0.70 and 0.85 fall on bucket boundaries.

A later migration that alters ``triage_decisions``, ``triage_tickets`` or
``triage_failures`` must drop these views first and create them again after: SQLite's batch
mode rebuilds a table by renaming, which fails while a view names the table, and PostgreSQL
refuses to drop or retype a column a view reads.
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

VIEWS = (
    "triage_routes_hourly",
    "triage_routes_daily",
    "triage_duplicate_clusters",
    "triage_score_distribution",
    "triage_failures_by_reason",
)


def _bucket(dialect: str, unit: str) -> str:
    """The start of the UTC hour or day of ``decided_at``."""
    if dialect == "postgresql":
        # timestamptz -> UTC wall time -> truncated -> back to timestamptz: independent of the
        # session's TimeZone setting.
        return f"date_trunc('{unit}', decided_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    fmt = "%Y-%m-%d %H:00:00" if unit == "hour" else "%Y-%m-%d 00:00:00"
    # strftime reads SQLAlchemy's stored text (UTC) and also ISO text with an offset.
    return f"strftime('{fmt}', decided_at)"


def _routes(dialect: str, unit: str) -> str:
    bucket = _bucket(dialect, unit)
    return f"""
SELECT {bucket} AS bucket,
       queue,
       route,
       count(*) AS decisions,
       avg(score) AS avg_score
FROM triage_decisions
GROUP BY {bucket}, queue, route
"""


def _earlier(a: str, b: str) -> str:
    """The earlier of two timestamps, ``b`` when ``a`` is null (no LEAST on SQLite)."""
    return f"CASE WHEN {a} IS NOT NULL AND {a} < {b} THEN {a} ELSE {b} END"


CLUSTERS = f"""
SELECT d.canonical_source,
       d.canonical_ticket_id,
       d.duplicates + 1 AS size,
       d.duplicates,
       {_earlier("COALESCE(root.decided_at, t.received_at)", "d.first_duplicate")} AS first_seen,
       d.last_duplicate AS last_seen,
       COALESCE(root.subject, t.subject) AS subject,
       COALESCE(root.queue, t.queue) AS queue
FROM (
    SELECT canonical_source,
           canonical_ticket_id,
           count(*) AS duplicates,
           min(decided_at) AS first_duplicate,
           max(decided_at) AS last_duplicate
    FROM triage_decisions
    WHERE route = 'duplicate'
    GROUP BY canonical_source, canonical_ticket_id
) AS d
LEFT JOIN triage_decisions AS root
    ON root.source = d.canonical_source AND root.ticket_id = d.canonical_ticket_id
LEFT JOIN triage_tickets AS t
    ON t.source = d.canonical_source AND t.ticket_id = d.canonical_ticket_id
"""


def _scores(dialect: str) -> str:
    if dialect == "postgresql":
        floor = "CAST(floor(score * 20) AS INTEGER)"
        real = "DOUBLE PRECISION"
    else:
        # No floor() in every SQLite build: CAST truncates toward zero, so step negatives down.
        floor = "(CAST(score * 20 AS INTEGER) - (score * 20 < CAST(score * 20 AS INTEGER)))"
        real = "REAL"
    return f"""
SELECT route,
       bucket_index,
       CAST(bucket_index AS {real}) / 20 AS score_low,
       CAST(bucket_index + 1 AS {real}) / 20 AS score_high,
       count(*) AS decisions
FROM (
    SELECT route, CASE WHEN score >= 1 THEN 19 ELSE {floor} END AS bucket_index
    FROM triage_decisions
    WHERE score IS NOT NULL
) AS scored
GROUP BY route, bucket_index
"""


FAILURES = """
SELECT error_type,
       count(*) AS failures,
       max(failed_at) AS last_failed_at
FROM triage_failures
GROUP BY error_type
"""


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    bodies = {
        "triage_routes_hourly": _routes(dialect, "hour"),
        "triage_routes_daily": _routes(dialect, "day"),
        "triage_duplicate_clusters": CLUSTERS,
        "triage_score_distribution": _scores(dialect),
        "triage_failures_by_reason": FAILURES,
    }
    for name in VIEWS:
        op.execute(f"CREATE VIEW {name} AS {bodies[name].strip()}")


def downgrade() -> None:
    for name in reversed(VIEWS):
        op.execute(f"DROP VIEW IF EXISTS {name}")

"""Tickets, decisions and failures.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "triage_tickets",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("ticket_id", sa.String(255), nullable=False),
        sa.Column("subject", sa.Text()),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("queue", sa.String(100)),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("created_at", _TS),
        sa.Column("received_at", _TS, nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("backfill", sa.Boolean(), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("stored_at", _TS, nullable=False),
        sa.UniqueConstraint("source", "ticket_id", name="uq_triage_tickets_key"),
    )
    op.create_table(
        "triage_decisions",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("ticket_id", sa.String(255), nullable=False),
        sa.Column("route", sa.String(16), nullable=False),
        sa.Column("score", sa.Float()),
        sa.Column("matched_source", sa.String(64)),
        sa.Column("matched_ticket_id", sa.String(255)),
        sa.Column("canonical_source", sa.String(64), nullable=False),
        sa.Column("canonical_ticket_id", sa.String(255), nullable=False),
        sa.Column("matches", sa.JSON(), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("duplicate_threshold", sa.Float(), nullable=False),
        sa.Column("suggest_threshold", sa.Float(), nullable=False),
        sa.Column("queue", sa.String(100)),
        sa.Column("subject", sa.Text()),
        sa.Column("received_at", _TS, nullable=False),
        sa.Column("decided_at", _TS, nullable=False),
        sa.UniqueConstraint("source", "ticket_id", name="uq_triage_decisions_key"),
        sa.CheckConstraint("route IN ('duplicate', 'suggest', 'manual')", name="ck_route"),
    )
    op.create_index("ix_triage_decisions_route", "triage_decisions", ["route"])
    op.create_index("ix_triage_decisions_queue", "triage_decisions", ["queue"])
    op.create_index("ix_triage_decisions_decided_at", "triage_decisions", ["decided_at"])
    op.create_index(
        "ix_triage_decisions_canonical_ticket_id", "triage_decisions", ["canonical_ticket_id"]
    )
    op.create_table(
        "triage_failures",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("ticket_id", sa.String(255), nullable=False),
        sa.Column("error_type", sa.String(100), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("failed_at", _TS, nullable=False),
        sa.UniqueConstraint("source", "ticket_id", name="uq_triage_failures_key"),
    )
    op.create_index("ix_triage_failures_failed_at", "triage_failures", ["failed_at"])


def downgrade() -> None:
    op.drop_table("triage_failures")
    op.drop_table("triage_decisions")
    op.drop_table("triage_tickets")

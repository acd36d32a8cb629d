"""Purges: one row per erased ticket (the tombstone workers catch up with) and one audit
row per purge run (who, when, why, how many; never the text).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05

tickets/purge.py describes the tables and the order a purge follows.
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "triage_purge_runs",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("requested_by", sa.String(200), nullable=False),
        sa.Column("reason", sa.String(16), nullable=False),
        sa.Column("criterion", sa.String(200), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
        sa.Column("tickets", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("decisions", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("failures", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("feedback", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("actions", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("queued", sa.Integer(), nullable=False, server_default="0"),
    )
    op.create_table(
        "triage_purges",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("ticket_id", sa.String(255), nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("purged_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("source", "ticket_id", name="uq_triage_purges_key"),
    )
    # A purge finds a ticket's actions by key (the unique key leads with kind and target).
    op.create_index("ix_triage_actions_key", "triage_actions", ["source", "ticket_id"])


def downgrade() -> None:
    op.drop_index("ix_triage_actions_key", table_name="triage_actions")
    op.drop_table("triage_purges")
    op.drop_table("triage_purge_runs")

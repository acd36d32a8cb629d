"""Agent feedback on decisions; end-to-end latency per decision.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    # Milliseconds from the producer accepting the ticket to its decision: the latency
    # histogram of /metrics reads it. Null for rows decided before this revision.
    with op.batch_alter_table("triage_decisions") as batch:
        batch.add_column(sa.Column("latency_ms", sa.Integer()))
    op.create_table(
        "triage_feedback",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("ticket_id", sa.String(255), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("agent", sa.String(200), nullable=False),
        sa.Column("comment", sa.Text()),
        sa.Column("route", sa.String(16), nullable=False),
        sa.Column("score", sa.Float()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("source", "ticket_id", "agent", name="uq_triage_feedback_agent"),
        sa.CheckConstraint("verdict IN ('confirm', 'veto')", name="ck_verdict"),
    )


def downgrade() -> None:
    op.drop_table("triage_feedback")
    with op.batch_alter_table("triage_decisions") as batch:
        batch.drop_column("latency_ms")

"""The outbox of actions: what a decision must cause outside (a signed webhook, later a
helpdesk's tag or note), written in the decision's own transaction.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04

tickets/outbox.py describes the columns and the life of a row.
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "triage_actions",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("action_id", sa.String(64), nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("ticket_id", sa.String(255), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("target", sa.String(1000), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True)),
        sa.Column("last_status", sa.Integer()),
        sa.Column("last_error", sa.Text()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True)),
        sa.UniqueConstraint("action_id", name="uq_triage_actions_action_id"),
        sa.UniqueConstraint(
            "kind", "target", "source", "ticket_id", name="uq_triage_actions_decision"
        ),
    )
    op.create_index("ix_triage_actions_due", "triage_actions", ["status", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_triage_actions_due", table_name="triage_actions")
    op.drop_table("triage_actions")

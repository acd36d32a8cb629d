"""Re-drive of failed tickets: the failure row's mode and re-drive marks, and an audit log.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("triage_failures") as batch:
        # The task's mode ('route' or 'backfill'): a re-driven history ticket must be stored
        # as history again, never routed.
        batch.add_column(sa.Column("mode", sa.String(16), nullable=False, server_default="route"))
        # Set by `triage redrive` when it re-publishes the ticket; cleared if it fails again.
        batch.add_column(sa.Column("redriven_at", sa.DateTime(timezone=True)))
        batch.add_column(
            sa.Column("redrive_count", sa.Integer(), nullable=False, server_default="0")
        )
    # One row per re-drive, kept after the ticket is decided (its failure row is then
    # deleted): the audit trail of what failed, why, and when it was sent again.
    op.create_table(
        "triage_redrives",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("ticket_id", sa.String(255), nullable=False),
        sa.Column("error_type", sa.String(100), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("redriven_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("outcome", sa.String(32), nullable=False),
    )
    op.create_index("ix_triage_redrives_key", "triage_redrives", ["source", "ticket_id"])


def downgrade() -> None:
    op.drop_index("ix_triage_redrives_key", "triage_redrives")
    op.drop_table("triage_redrives")
    # No table copy on SQLite (its 3.35+ DROP COLUMN): a copy would trip over the views.
    with op.batch_alter_table("triage_failures", recreate="never") as batch:
        batch.drop_column("redrive_count")
        batch.drop_column("redriven_at")
        batch.drop_column("mode")

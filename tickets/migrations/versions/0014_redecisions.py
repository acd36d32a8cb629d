"""Re-decisions of edited tickets (TRIAGE_REDECIDE_ON_EDIT): when a decision was last
re-decided, and one audit row per re-decision (the decision before and after; never text).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05

worker/redecide.py describes when a ticket is re-decided.
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column("triage_decisions", sa.Column("redecided_at", sa.DateTime(timezone=True)))
    op.create_table(
        "triage_redecisions",
        sa.Column("id", _BigId, primary_key=True, autoincrement=True),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("ticket_id", sa.String(255), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("route_before", sa.String(16), nullable=False),
        sa.Column("score_before", sa.Float()),
        sa.Column("matched_source_before", sa.String(64)),
        sa.Column("matched_ticket_id_before", sa.String(255)),
        sa.Column("route_after", sa.String(16)),
        sa.Column("score_after", sa.Float()),
        sa.Column("matched_source_after", sa.String(64)),
        sa.Column("matched_ticket_id_after", sa.String(255)),
        sa.Column("redecided_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_triage_redecisions_key", "triage_redecisions", ["source", "ticket_id"])


def downgrade() -> None:
    op.drop_index("ix_triage_redecisions_key", table_name="triage_redecisions")
    op.drop_table("triage_redecisions")
    op.drop_column("triage_decisions", "redecided_at")

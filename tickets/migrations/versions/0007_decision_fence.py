"""The decision lock's fence: one row per lock, its token claimed by each holder on entry.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04

worker/decision_lock.py: a holder whose Redis lock expired while it was paused must not
commit what it decided on its stale view; its commit runs only while this row still holds
the token it claimed. The row is created by the first claim.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "triage_decision_fence",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("token", sa.BigInteger(), nullable=False),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("triage_decision_fence")

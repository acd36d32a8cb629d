"""Tickets have a life: a status in the product's vocabulary and the helpdesk's time of the
last change applied.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05

- ``status``: ``open``, ``pending``, ``solved``, ``closed`` or ``deleted`` (tickets/model.py
  Status), set by the helpdesks' update webhooks (worker/lifecycle.py); every stored ticket
  starts ``open``. TRIAGE_MATCH_STATUSES filters matches on it inside the decision section.
- ``updated_at``: the helpdesk's time of the last update applied (null: none yet); an update
  carrying an older time is not applied.

Columns with a server default are added without a table copy on SQLite, so the BI views of
0004 stay as they are.
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "triage_tickets",
        sa.Column("status", sa.String(16), nullable=False, server_default="open"),
    )
    op.add_column("triage_tickets", sa.Column("updated_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    # ALTER TABLE DROP COLUMN in place (SQLite ≥ 3.35): a table copy would break the BI views.
    with op.batch_alter_table("triage_tickets", recreate="never") as batch:
        batch.drop_column("updated_at")
        batch.drop_column("status")

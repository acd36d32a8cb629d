"""Language-coverage guard on decisions; the active vector collection.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("triage_decisions") as batch:
        # Share of the ticket's tokens the model does not know ([UNK]); null if not measured.
        batch.add_column(sa.Column("unknown_ratio", sa.Float()))
        # Why a ticket was routed as it was when the score alone does not say it.
        batch.add_column(sa.Column("reason", sa.Text()))
    # Small key/value state shared by workers: which Chroma collection is active
    # (`triage reindex` switches it once a new collection is complete).
    op.create_table(
        "triage_index_state",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("triage_index_state")
    with op.batch_alter_table("triage_decisions") as batch:
        batch.drop_column("reason")
        batch.drop_column("unknown_ratio")

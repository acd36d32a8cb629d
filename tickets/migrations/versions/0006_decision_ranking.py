"""Decisions say how their matches were ranked, and keep the fused score apart from the cosine.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04

``score`` stays the cosine of the matched ticket (the route is the thresholds' rule on it);
``ranked_by`` says what ordered ``matches`` ('hybrid' or 'cosine'), and ``fused_score`` is
the matched ticket's dense + BM25 score under hybrid ranking. Rows decided before this
revision keep both null: how they were ranked was not recorded.

Adding nullable columns needs no table copy on SQLite (ALTER TABLE ADD COLUMN), so the BI
views of 0004, which name other columns only, stay as they are.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("triage_decisions", sa.Column("ranked_by", sa.String(16)))
    op.add_column("triage_decisions", sa.Column("fused_score", sa.Float()))


def downgrade() -> None:
    with op.batch_alter_table("triage_decisions", recreate="never") as batch:
        batch.drop_column("fused_score")
        batch.drop_column("ranked_by")

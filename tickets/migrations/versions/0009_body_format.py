"""Stored tickets say what their body is: 'text' (intake made it plain text) or 'html'.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04

`triage reindex` and the BM25 index prepare a stored body again; a body that intake already
converted from HTML must not be converted a second time (``&lt;div&gt;`` a customer typed is
``<div>`` in the stored text and stays so). Rows stored before this revision are 'html':
text preparation treats them as it did when they were first embedded.

Adding a column with a server default needs no table copy on SQLite (ALTER TABLE ADD COLUMN),
so the BI views of 0004, which name other columns only, stay as they are.
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "triage_tickets",
        sa.Column("body_format", sa.String(8), nullable=False, server_default="html"),
    )


def downgrade() -> None:
    with op.batch_alter_table("triage_tickets", recreate="never") as batch:
        batch.drop_column("body_format")

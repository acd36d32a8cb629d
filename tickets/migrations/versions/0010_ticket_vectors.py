"""Each ticket keeps its vector beside its decision, and says when the vector store got it.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-10

worker/pipeline.py decides a batch against a snapshot taken outside the decision lock and,
inside it, compares with the tickets committed since (the catch-up) using the vectors kept
here; the Chroma upsert follows the commit, outside the lock, and sets ``indexed_at``.

- ``vector``: the ticket's unit vector, float32 bytes, in the space of the collection that
  was active when it was written; null on rows stored before this revision (they are in the
  vector store already: treated as indexed; `triage reindex` fills them).
- ``indexed_at``: when the vector reached the vector store; null while it has not (a crash
  between the commit and the upsert), which puts the row in every later catch-up until a
  worker re-stores it from ``vector``. The partial index keeps finding those rows cheap.
- ``readable``: the language-coverage guard's verdict, stored with the vector's metadata
  (null before this revision: readable).
- ``(queue, id)`` and ``(source, id)``: the newest ticket of one match scope
  (TRIAGE_MATCH_SCOPE), read on every batch.

Nullable columns are added without a table copy on SQLite (ALTER TABLE ADD COLUMN), so the BI
views of 0004 stay as they are.
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_UNINDEXED = "indexed_at IS NULL AND vector IS NOT NULL"


def upgrade() -> None:
    op.add_column("triage_tickets", sa.Column("vector", sa.LargeBinary()))
    op.add_column("triage_tickets", sa.Column("indexed_at", sa.DateTime(timezone=True)))
    op.add_column("triage_tickets", sa.Column("readable", sa.Boolean()))
    op.create_index(
        "ix_triage_tickets_unindexed",
        "triage_tickets",
        ["id"],
        postgresql_where=sa.text(_UNINDEXED),
        sqlite_where=sa.text(_UNINDEXED),
    )
    op.create_index("ix_triage_tickets_queue_id", "triage_tickets", ["queue", "id"])
    op.create_index("ix_triage_tickets_source_id", "triage_tickets", ["source", "id"])


def downgrade() -> None:
    op.drop_index("ix_triage_tickets_source_id", "triage_tickets")
    op.drop_index("ix_triage_tickets_queue_id", "triage_tickets")
    op.drop_index("ix_triage_tickets_unindexed", "triage_tickets")
    with op.batch_alter_table("triage_tickets", recreate="never") as batch:
        batch.drop_column("readable")
        batch.drop_column("indexed_at")
        batch.drop_column("vector")

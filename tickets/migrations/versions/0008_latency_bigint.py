"""A decision's latency as a 64-bit integer.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04

A re-driven ticket keeps the time it first arrived, so its latency can exceed the 24.8 days
a 32-bit count of milliseconds holds; PostgreSQL then refuses the decision row, and the batch
would be retried forever. SQLite's INTEGER is already 64-bit, and altering it there would mean
copying the table under its views, so only PostgreSQL (and other databases with a 32-bit
INTEGER) change.
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column("triage_decisions", "latency_ms", type_=sa.BigInteger())


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column("triage_decisions", "latency_ms", type_=sa.Integer())

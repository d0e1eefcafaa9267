"""Settling above a hold: what a settle asked for beyond the hold and neither the balance nor
the overdraft covered (not charged), so `rebuild` restores the hold's record exactly (a replay
of the settle compares charged + uncovered with its amount).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 15:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("credit_holds", schema=None) as batch_op:
        batch_op.add_column(sa.Column("uncovered", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("credit_holds", schema=None) as batch_op:
        batch_op.drop_column("uncovered")

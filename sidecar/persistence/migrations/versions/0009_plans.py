"""Plans with renewing allowances: the plans (mirrored from the outbox's kind=plan entries) and
each account's plan, its anchor, since when it is on it, and its next renewal (with the outbox
entry that last set it: the latest wins).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 15:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "plans",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("definition", sa.JSON(), nullable=False),
        sa.Column("is_default", sa.Boolean(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("version", sa.String(length=32), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("plan", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("plan_anchor_ms", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("plan_since_ms", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("plan_next_ms", sa.BigInteger(), nullable=True))
        batch_op.add_column(
            sa.Column("plan_version", sa.String(length=32), nullable=False, server_default="")
        )


def downgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("plan_version")
        batch_op.drop_column("plan_next_ms")
        batch_op.drop_column("plan_since_ms")
        batch_op.drop_column("plan_anchor_ms")
        batch_op.drop_column("plan")
    op.drop_table("plans")

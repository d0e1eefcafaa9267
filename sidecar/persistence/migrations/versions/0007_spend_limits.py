"""Spending limits: an account's limit (credits per window of interval_count intervals; no
interval: a lifetime limit), mirrored from the outbox's account entries, and what was spent
in its current window, from the transactions; the same for API keys.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 13:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


# An API key's limit and state, like the account's.
COLUMNS = (
    ("spend_limit_credits", sa.BigInteger()),
    ("spend_limit_interval", sa.String(length=8)),
    ("spend_limit_interval_count", sa.Integer()),
    ("spend_state", sa.String(length=40)),
)


def upgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("spend_limit_credits", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("spend_limit_interval", sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column("spend_limit_interval_count", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("spend_state", sa.String(length=40), nullable=True))
        batch_op.add_column(
            sa.Column("spend_version", sa.String(length=32), nullable=False, server_default="")
        )

    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        for name, kind in COLUMNS:
            batch_op.add_column(sa.Column(name, kind, nullable=True))
        batch_op.add_column(
            sa.Column("spend_version", sa.String(length=32), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("settings_version", sa.String(length=32), nullable=False, server_default="")
        )


def downgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("settings_version")
        batch_op.drop_column("spend_version")
        for name, _ in reversed(COLUMNS):
            batch_op.drop_column(name)
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("spend_version")
        batch_op.drop_column("spend_state")
        batch_op.drop_column("spend_limit_interval_count")
        batch_op.drop_column("spend_limit_interval")
        batch_op.drop_column("spend_limit_credits")

"""Archive tables: old transactions and their allocations moved out of the live tables by
`credit-sidecar archive`, and per-account totals of what was moved.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 04:55:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from sidecar.persistence.models import UTCDateTime

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "credit_transactions_archive",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("account", sa.String(length=128), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        sa.Column("debt_after", sa.BigInteger(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("metadata", sa.Text(), nullable=True),
        sa.Column("idempotency_key", sa.String(length=128), nullable=True),
        sa.Column("hold_id", sa.String(length=128), nullable=True),
        sa.Column("source_transaction_id", sa.String(length=64), nullable=True),
        sa.Column("key_id", sa.String(length=64), nullable=True),
        sa.Column("route", sa.String(length=64), nullable=True),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_transactions_archive")),
    )
    with op.batch_alter_table("credit_transactions_archive", schema=None) as batch_op:
        batch_op.create_index(
            "ix_credit_transactions_archive_account_seq", ["account", "seq"], unique=False
        )
    op.create_table(
        "credit_allocations_archive",
        sa.Column("transaction_id", sa.String(length=64), nullable=False),
        sa.Column("bucket_id", sa.String(length=200), nullable=False),
        sa.Column("account", sa.String(length=128), nullable=False),
        sa.Column("remaining_delta", sa.BigInteger(), nullable=False),
        sa.Column("held_delta", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "transaction_id", "bucket_id", name=op.f("pk_credit_allocations_archive")
        ),
    )
    op.create_table(
        "credit_archive_totals",
        sa.Column("account", sa.String(length=128), nullable=False),
        sa.Column("transactions", sa.BigInteger(), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("through_seq", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("account", name=op.f("pk_credit_archive_totals")),
    )


def downgrade() -> None:
    op.drop_table("credit_archive_totals")
    op.drop_table("credit_allocations_archive")
    with op.batch_alter_table("credit_transactions_archive", schema=None) as batch_op:
        batch_op.drop_index("ix_credit_transactions_archive_account_seq")
    op.drop_table("credit_transactions_archive")

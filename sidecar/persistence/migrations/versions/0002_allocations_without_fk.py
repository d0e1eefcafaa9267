"""Allocations without a foreign key to their transaction.

The writer inserts a transaction and its allocations in the same SQL transaction, from the
same outbox entry, so the key can never be violated; checking it cost PostgreSQL an index
probe and a row lock per allocation, 15% of the writer's throughput (bench/results/writer.md).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 02:25:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FK = "fk_credit_allocations_transaction_id_credit_transactions"


def upgrade() -> None:
    with op.batch_alter_table("credit_allocations") as batch_op:
        batch_op.drop_constraint(FK, type_="foreignkey")


def downgrade() -> None:
    with op.batch_alter_table("credit_allocations") as batch_op:
        batch_op.create_foreign_key(FK, "credit_transactions", ["transaction_id"], ["id"])

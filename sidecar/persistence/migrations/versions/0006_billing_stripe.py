"""Billing that follows Stripe: each purchase's Charge and the refunds and disputes seen on it
(with a version), auto top-ups that wait for the customer or retry under a new idempotency key,
and an account's billing email.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("stripe_purchases", schema=None) as batch_op:
        batch_op.add_column(sa.Column("charge_id", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("charge_amount", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("charge_currency", sa.String(length=3), nullable=True))
        batch_op.add_column(sa.Column("clawback_state", sa.JSON(), nullable=True))
        batch_op.add_column(
            sa.Column("clawback_version", sa.BigInteger(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("auto_topups", schema=None) as batch_op:
        batch_op.add_column(sa.Column("action_url", sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column("action_payment_intent", sa.String(length=255), nullable=True)
        )
        batch_op.add_column(
            sa.Column("key_attempt", sa.Integer(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("billing_email", sa.String(length=320), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("accounts", schema=None) as batch_op:
        batch_op.drop_column("billing_email")
    with op.batch_alter_table("auto_topups", schema=None) as batch_op:
        batch_op.drop_column("key_attempt")
        batch_op.drop_column("action_payment_intent")
        batch_op.drop_column("action_url")
    with op.batch_alter_table("stripe_purchases", schema=None) as batch_op:
        batch_op.drop_column("clawback_version")
        batch_op.drop_column("clawback_state")
        batch_op.drop_column("charge_currency")
        batch_op.drop_column("charge_amount")
        batch_op.drop_column("charge_id")

"""Low-balance deliveries know their URL's host (deliveries in flight are limited per host), and
indexes for pruning finished deliveries and auto top-up trigger events after the retention.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07 08:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from sidecar.billing.netguard import webhook_host

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("notification_deliveries", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("host", sa.String(length=255), nullable=False, server_default="")
        )
        batch_op.create_index(
            "ix_notification_deliveries_finished", ["status", "created_at"], unique=False
        )
    with op.batch_alter_table("stripe_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_stripe_events_type_received", ["type", "received_at"], unique=False
        )
    # The host of the deliveries still to send (finished ones are never sent again).
    deliveries = sa.table(
        "notification_deliveries",
        sa.column("id", sa.String),
        sa.column("url", sa.String),
        sa.column("host", sa.String),
        sa.column("status", sa.String),
    )
    conn = op.get_bind()
    pending = conn.execute(
        sa.select(deliveries.c.id, deliveries.c.url).where(deliveries.c.status == "pending")
    ).all()
    for delivery_id, url in pending:
        conn.execute(
            sa.update(deliveries)
            .where(deliveries.c.id == delivery_id)
            .values(host=webhook_host(url))
        )


def downgrade() -> None:
    with op.batch_alter_table("stripe_events", schema=None) as batch_op:
        batch_op.drop_index("ix_stripe_events_type_received")
    with op.batch_alter_table("notification_deliveries", schema=None) as batch_op:
        batch_op.drop_index("ix_notification_deliveries_finished")
        batch_op.drop_column("host")

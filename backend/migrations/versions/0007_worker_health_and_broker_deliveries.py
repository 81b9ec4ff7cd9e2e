"""worker health (state, problem, live pool processes and their pids) and the PostgreSQL broker's deliveries

Revision ID: 0007
Revises: 0004
Create Date: 2026-12-06 08:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import backend.app.database

revision: str = "0007"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("worker_heartbeats", schema=None) as batch_op:
        batch_op.add_column(sa.Column("state", sa.String(length=20), server_default="healthy", nullable=False))
        batch_op.add_column(sa.Column("problem", sa.String(length=500), nullable=True))
        batch_op.add_column(sa.Column("live_processes", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("pool_pids", sa.JSON(), nullable=True))
    op.create_table(
        "broker_deliveries",
        sa.Column("message_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("delivery_tag", sa.String(length=64), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("taken_at", backend.app.database.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("message_id", name=op.f("pk_broker_deliveries")),
    )
    with op.batch_alter_table("broker_deliveries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_broker_deliveries_delivery_tag"), ["delivery_tag"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("broker_deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_broker_deliveries_delivery_tag"))
    op.drop_table("broker_deliveries")
    with op.batch_alter_table("worker_heartbeats", schema=None) as batch_op:
        batch_op.drop_column("pool_pids")
        batch_op.drop_column("live_processes")
        batch_op.drop_column("problem")
        batch_op.drop_column("state")

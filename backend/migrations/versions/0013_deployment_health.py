"""deployment health: what the watcher last saw of a deployment's containers after its health gate

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 14:30:00

Existing deployments start with no health (the watcher's first pass fills it in).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import backend.app.database

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("health", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("service_health", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("health_since", backend.app.database.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("watch_hold_until", backend.app.database.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_column("watch_hold_until")
        batch_op.drop_column("health_since")
        batch_op.drop_column("service_health")
        batch_op.drop_column("health")

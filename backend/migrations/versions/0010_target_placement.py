"""target placement: placed targets (a queue of their own), a host's local engine, the targets a worker serves

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-13 09:00:00

Existing targets are not placed and bound to no host: their work stays on the shared queue, served by every
worker without a declaration, as before.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("targets", schema=None) as batch_op:
        batch_op.add_column(sa.Column("placed", sa.Boolean(), server_default="false", nullable=False))
        batch_op.add_column(sa.Column("host", sa.String(length=255), nullable=True))
    with op.batch_alter_table("worker_heartbeats", schema=None) as batch_op:
        batch_op.add_column(sa.Column("targets", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("worker_heartbeats", schema=None) as batch_op:
        batch_op.drop_column("targets")
    with op.batch_alter_table("targets", schema=None) as batch_op:
        batch_op.drop_column("host")
        batch_op.drop_column("placed")

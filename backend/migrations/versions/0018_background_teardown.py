"""background stop and delete: a ``deleting`` deployment remembers whether its teardown keeps the volumes

The statuses ``stopping`` and ``deleting`` need no change of the schema: ``deployments.status`` is stored as a
string (``native_enum=False``, no CHECK constraint).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06 17:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("teardown_keep_volumes", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("teardown_keep_volumes")

"""targets.compose_policy: what a compose document may ask of the target's host

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Null is the default policy: everything denied (existing targets included).
    with op.batch_alter_table("targets") as batch:
        batch.add_column(sa.Column("compose_policy", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("targets") as batch:
        batch.drop_column("compose_policy")

"""scoped API tokens: scopes, an optional organisation and stacks per personal API token

Existing tokens get ``["admin"]``: they keep their owner's rights, as before.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06 15:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("scopes", sa.JSON(), nullable=False, server_default='["admin"]'))
        batch.add_column(sa.Column("organization_id", sa.String(length=36), nullable=True))
        batch.add_column(sa.Column("stack_ids", sa.JSON(), nullable=True))
        batch.create_foreign_key("fk_api_tokens_organization_id", "organizations", ["organization_id"], ["id"], ondelete="CASCADE")


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_constraint("fk_api_tokens_organization_id", type_="foreignkey")
        batch.drop_column("stack_ids")
        batch.drop_column("organization_id")
        batch.drop_column("scopes")

"""registries: per-organisation container registry credentials (the password Fernet-encrypted)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-14 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import backend.app.database

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "registries",
        sa.Column("organization_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("server", sa.String(length=255), nullable=False),
        sa.Column("username", sa.String(length=255), nullable=False),
        sa.Column("password_encrypted", sa.Text(), nullable=False),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("created_at", backend.app.database.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", backend.app.database.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_registries_organization_id_organizations"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_registries")),
        sa.UniqueConstraint("organization_id", "name", name="uq_registries_org_name"),
        sa.UniqueConstraint("organization_id", "server", name="uq_registries_org_server"),
    )
    with op.batch_alter_table("registries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_registries_organization_id"), ["organization_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("registries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_registries_organization_id"))
    op.drop_table("registries")

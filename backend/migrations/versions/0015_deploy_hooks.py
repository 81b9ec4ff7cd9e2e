"""deploy hooks: a deployment's signed URLs for CI, and their calls

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 14:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import backend.app.database

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "deploy_hooks",
        sa.Column("organization_id", sa.String(length=36), nullable=False),
        sa.Column("deployment_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("secret_encrypted", sa.Text(), nullable=False),
        sa.Column("previous_secret_encrypted", sa.Text(), nullable=True),
        sa.Column("previous_valid_until", backend.app.database.UTCDateTime(timezone=True), nullable=True),
        sa.Column("allowed_variables", sa.JSON(), nullable=False),
        sa.Column("branch", sa.String(length=255), nullable=True),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("created_by", sa.String(length=320), nullable=True),
        sa.Column("created_at", backend.app.database.UTCDateTime(timezone=True), nullable=False),
        sa.Column("rotated_at", backend.app.database.UTCDateTime(timezone=True), nullable=True),
        sa.Column("last_called_at", backend.app.database.UTCDateTime(timezone=True), nullable=True),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_deploy_hooks_organization_id_organizations"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["deployment_id"], ["deployments.id"], name=op.f("fk_deploy_hooks_deployment_id_deployments"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deploy_hooks")),
    )
    op.create_index(op.f("ix_deploy_hooks_organization_id"), "deploy_hooks", ["organization_id"], unique=False)
    op.create_index(op.f("ix_deploy_hooks_deployment_id"), "deploy_hooks", ["deployment_id"], unique=False)
    op.create_table(
        "deploy_hook_calls",
        sa.Column("hook_id", sa.String(length=36), nullable=False),
        sa.Column("at", backend.app.database.UTCDateTime(timezone=True), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=64), nullable=False),
        sa.Column("client", sa.String(length=64), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=True),
        sa.Column("nonce", sa.String(length=128), nullable=True),
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(
            ["hook_id"], ["deploy_hooks.id"], name=op.f("fk_deploy_hook_calls_hook_id_deploy_hooks"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deploy_hook_calls")),
        sa.UniqueConstraint("hook_id", "nonce", name="uq_deploy_hook_calls_nonce"),
    )
    op.create_index("ix_deploy_hook_calls_hook_at", "deploy_hook_calls", ["hook_id", "at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_deploy_hook_calls_hook_at", table_name="deploy_hook_calls")
    op.drop_table("deploy_hook_calls")
    op.drop_index(op.f("ix_deploy_hooks_deployment_id"), table_name="deploy_hooks")
    op.drop_index(op.f("ix_deploy_hooks_organization_id"), table_name="deploy_hooks")
    op.drop_table("deploy_hooks")

"""listing indexes (keyset pages per filter), retention index, deployment status counts

Revision ID: 0006
Revises: 0003
Create Date: 2026-11-30 17:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_DEPLOYMENT_INDEXES = {
    "ix_deployments_created": ["created_at", "id"],
    "ix_deployments_org_created": ["organization_id", "created_at", "id"],
    "ix_deployments_org_status_created": ["organization_id", "status", "created_at", "id"],
    "ix_deployments_status_created": ["status", "created_at", "id"],
    "ix_deployments_stack_created": ["stack_id", "created_at", "id"],
    "ix_deployments_stack_status_created": ["stack_id", "status", "created_at", "id"],
    "ix_deployments_target_created": ["target_id", "created_at", "id"],
    "ix_deployments_target_status_created": ["target_id", "status", "created_at", "id"],
    "ix_deployments_updated": ["updated_at", "id"],
}


def upgrade() -> None:
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_index("ix_deployments_org_created")
        batch_op.drop_index("ix_deployments_stack_id")
        batch_op.drop_index("ix_deployments_target_status")  # a prefix of ix_deployments_target_status_created
        for name, columns in _DEPLOYMENT_INDEXES.items():
            batch_op.create_index(name, columns, unique=False)
    with op.batch_alter_table("deployment_status_history", schema=None) as batch_op:
        batch_op.drop_index("ix_deployment_status_history_deployment_id")
        batch_op.create_index("ix_deployment_status_history_deployment", ["deployment_id", "id"], unique=False)

    op.create_table(
        "deployment_status_counts",
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("status", name=op.f("pk_deployment_status_counts")),
    )
    # one full count now, so that /metrics never needs one again
    op.execute(
        "INSERT INTO deployment_status_counts (status, count) SELECT CAST(status AS VARCHAR(20)), count(*) FROM deployments GROUP BY status"
    )


def downgrade() -> None:
    op.drop_table("deployment_status_counts")
    with op.batch_alter_table("deployment_status_history", schema=None) as batch_op:
        batch_op.drop_index("ix_deployment_status_history_deployment")
        batch_op.create_index("ix_deployment_status_history_deployment_id", ["deployment_id"], unique=False)
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        for name in _DEPLOYMENT_INDEXES:
            batch_op.drop_index(name)
        batch_op.create_index("ix_deployments_stack_id", ["stack_id"], unique=False)
        batch_op.create_index("ix_deployments_target_status", ["target_id", "status"], unique=False)
        batch_op.create_index("ix_deployments_org_created", ["organization_id", "created_at"], unique=False)

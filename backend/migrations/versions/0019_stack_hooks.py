"""stack hooks: a deploy hook belongs to one deployment or to one stack (rolling out its deployments)

``deploy_hooks.deployment_id`` becomes nullable, ``stack_id`` is added, and exactly one of them is set.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06 17:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("deploy_hooks") as batch:
        batch.add_column(sa.Column("stack_id", sa.String(length=36), nullable=True))
        batch.alter_column("deployment_id", existing_type=sa.String(length=36), nullable=True)
        batch.create_foreign_key(op.f("fk_deploy_hooks_stack_id_stacks"), "stacks", ["stack_id"], ["id"], ondelete="CASCADE")
        batch.create_index(op.f("ix_deploy_hooks_stack_id"), ["stack_id"], unique=False)
        batch.create_check_constraint(op.f("ck_deploy_hooks_owner"), "(deployment_id IS NULL) <> (stack_id IS NULL)")


def downgrade() -> None:
    op.execute("DELETE FROM deploy_hooks WHERE deployment_id IS NULL")
    with op.batch_alter_table("deploy_hooks") as batch:
        batch.drop_constraint(op.f("ck_deploy_hooks_owner"), type_="check")
        batch.drop_index(op.f("ix_deploy_hooks_stack_id"))
        batch.drop_constraint(op.f("fk_deploy_hooks_stack_id_stacks"), type_="foreignkey")
        batch.alter_column("deployment_id", existing_type=sa.String(length=36), nullable=False)
        batch.drop_column("stack_id")

"""deployment revisions: every existing deployment becomes revision 1

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-12 09:00:00

Each deployment gets ``revision`` (1), ``last_good_revision`` (1 when it is running or stopped: it ran)
and ``auto_rollback`` (on), and one row in ``deployment_revisions`` holding its snapshot as it is (its
variables and rendered compose, encrypted as they are) and its stack as it is now (the version and template
it was created from were not kept before this migration). Its images' digests are unknown: a rollback to
such a revision deploys the images its document names.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import backend.app.database

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "deployment_revisions",
        sa.Column("deployment_id", sa.String(length=36), nullable=False),
        sa.Column("number", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column(
            "reason",
            sa.Enum("created", "update", "rollback", "automatic_rollback", name="revision_reason", native_enum=False, length=32),
            nullable=False,
        ),
        sa.Column("rollback_of", sa.Integer(), nullable=True),
        sa.Column(
            "outcome",
            sa.Enum(
                "pending",
                "deploying",
                "running",
                "failed",
                "rolled_back",
                "superseded",
                name="revision_outcome",
                native_enum=False,
                length=32,
            ),
            nullable=False,
        ),
        sa.Column("stack_id", sa.String(length=36), nullable=True),
        sa.Column("stack_version", sa.String(length=50), nullable=True),
        sa.Column("stack_template", sa.Text(), nullable=True),
        sa.Column("stack_variables", sa.JSON(), nullable=True),
        sa.Column("variables", sa.JSON(), nullable=False),
        sa.Column("rendered_compose", sa.Text(), nullable=True),
        sa.Column("images", sa.JSON(), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(length=200), nullable=True),
        sa.Column("created_at", backend.app.database.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", backend.app.database.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["deployment_id"], ["deployments.id"], name=op.f("fk_deployment_revisions_deployment_id_deployments"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["stack_id"], ["stacks.id"], name=op.f("fk_deployment_revisions_stack_id_stacks"), ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("deployment_id", "number", name=op.f("pk_deployment_revisions")),
    )
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("revision", sa.Integer(), nullable=False, server_default="1"))
        batch_op.add_column(sa.Column("last_good_revision", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("auto_rollback", sa.Boolean(), nullable=False, server_default=sa.true()))

    op.execute("UPDATE deployments SET last_good_revision = 1 WHERE status IN ('running', 'stopped')")
    op.execute(
        """
        INSERT INTO deployment_revisions (deployment_id, number, reason, rollback_of, outcome, stack_id,
            stack_version, stack_template, stack_variables, variables, rendered_compose, images, error_message,
            created_by, created_at, finished_at)
        SELECT d.id, 1, 'created', NULL,
            CASE d.status WHEN 'stopped' THEN 'running' WHEN 'cancelled' THEN 'failed' ELSE d.status END,
            s.id, s.version, s.template, s.variables, d.variables, d.rendered_compose, '[]',
            CASE WHEN d.status IN ('failed', 'cancelled') THEN d.error_message END,
            u.email, d.created_at,
            CASE WHEN d.status IN ('running', 'stopped', 'failed', 'cancelled') THEN d.finished_at END
        FROM deployments d
        LEFT JOIN stacks s ON s.id = d.stack_id
        LEFT JOIN users u ON u.id = d.created_by
        """
    )


def downgrade() -> None:
    with op.batch_alter_table("deployments", schema=None) as batch_op:
        batch_op.drop_column("auto_rollback")
        batch_op.drop_column("last_good_revision")
        batch_op.drop_column("revision")
    op.drop_table("deployment_revisions")

"""deferrable deployment children: the history and revision foreign keys to ``deployments`` may be deferred

A new deployment's ``None -> pending`` history row and its revision 1 are written before the deployment's
own ``INSERT`` (its creation's last statement, see ``state_machine.record_creation``), which needs their
foreign keys to ``deployments`` checked at the commit rather than at each statement. On PostgreSQL the
constraints become ``DEFERRABLE INITIALLY IMMEDIATE``: every other transaction checks them at each statement
as before, and the creation defers them with ``SET CONSTRAINTS``. SQLite needs no change to its schema: the
creation's ``PRAGMA defer_foreign_keys`` defers any foreign key for the rest of its transaction.

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06 23:40:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CONSTRAINTS = (
    ("deployment_status_history", "fk_deployment_status_history_deployment_id_deployments"),
    ("deployment_revisions", "fk_deployment_revisions_deployment_id_deployments"),
)


def _alter(deferrable: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table, constraint in CONSTRAINTS:
        op.execute(f"ALTER TABLE {table} ALTER CONSTRAINT {constraint} {deferrable}")


def upgrade() -> None:
    _alter("DEFERRABLE INITIALLY IMMEDIATE")


def downgrade() -> None:
    _alter("NOT DEFERRABLE")

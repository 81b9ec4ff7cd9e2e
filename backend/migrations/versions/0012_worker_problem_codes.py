"""worker problem codes: a degraded worker's problems as codes with their params, beside the English text

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 14:00:00

Existing rows keep their text and have no codes (a client shows the text for them).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("worker_heartbeats", schema=None) as batch_op:
        batch_op.add_column(sa.Column("problem_codes", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("worker_heartbeats", schema=None) as batch_op:
        batch_op.drop_column("problem_codes")

"""jobs.suspect and jobs.crashes: a dead worker's jobs are retried alone, and decoder crashes are counted per job.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:  # SQLite adds columns with a constant default in place
        batch.add_column(sa.Column("suspect", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("crashes", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("crashes")
        batch.drop_column("suspect")

"""jobs.lease and expert_runs.lease: a fencing token, moved on by every claim.

A worker whose lease expired while it was still working (paused, cut off from the database) finds its token taken
and cannot finish, fail or requeue the job another worker now holds.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("jobs", "expert_runs"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("lease", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    for table in ("jobs", "expert_runs"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("lease")

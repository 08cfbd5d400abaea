"""jobs.lease and expert_runs.lease: a fencing token, moved on by every claim; videos.size_bytes 64-bit on PostgreSQL.

A worker whose lease expired while it was still working (paused, cut off from the database) finds its token taken
and cannot finish, fail or requeue the job another worker now holds.

PostgreSQL's INTEGER ends at 2 GiB: a larger video could not be catalogued there. SQLite's INTEGER is 64-bit already;
its table is not rebuilt (a batch rebuild of `videos` would cascade-delete the jobs under foreign_keys=ON).

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
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("videos", "size_bytes", type_=sa.BigInteger(), existing_type=sa.Integer(),
                        existing_nullable=False)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("videos", "size_bytes", type_=sa.Integer(), existing_type=sa.BigInteger(),
                        existing_nullable=False)
    for table in ("jobs", "expert_runs"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("lease")

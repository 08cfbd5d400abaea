"""videos.tag: a label set at ingest, filterable.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23

Added at commit 4c31fca (by an ALTER TABLE at start-up then); catalogs made before migrations existed are stamped with
this revision when they have the column.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("videos") as batch:  # SQLite adds a nullable column in place (no table copy)
        batch.add_column(sa.Column("tag", sa.String(length=256), nullable=True))
        batch.create_index("ix_videos_tag", ["tag"])


def downgrade() -> None:
    with op.batch_alter_table("videos") as batch:  # SQLite copies the table (runs with foreign keys off)
        batch.drop_index("ix_videos_tag")
        batch.drop_column("tag")

"""Counters table with the `ready` generation counter.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23

Added at commit ab97d10 (created by `create_all` then); catalogs made before migrations existed are stamped with this
revision when they have `counters` but no `videos.tag`.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    counters = op.create_table(
        "counters",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("value", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    # The search process compares this row's value to decide whether its in-memory vectors are current; bumps are
    # UPDATEs, so the row must exist before any writer runs.
    op.bulk_insert(counters, [{"name": "ready", "value": 0}])


def downgrade() -> None:
    op.drop_table("counters")

"""expert_runs: each expert's state per video (done / unavailable + reason) and the expert stage's queue.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATES = ("queued", "running", "done", "unavailable", "failed")


def upgrade() -> None:
    op.create_table(
        "expert_runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("video_id", sa.Integer(), sa.ForeignKey("videos.id", ondelete="CASCADE"), nullable=False),
        sa.Column("expert", sa.String(32), nullable=False),
        sa.Column("state", sa.Enum(*STATES, name="expertstate"), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("segments", sa.Integer(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("worker", sa.String(128), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("video_id", "expert", name="uq_expert_runs_video_expert"),
    )
    op.create_index("ix_expert_runs_video_id", "expert_runs", ["video_id"])
    op.create_index("ix_expert_runs_state", "expert_runs", ["state"])


def downgrade() -> None:
    op.drop_index("ix_expert_runs_state", table_name="expert_runs")
    op.drop_index("ix_expert_runs_video_id", table_name="expert_runs")
    op.drop_table("expert_runs")
    sa.Enum(name="expertstate").drop(op.get_bind(), checkfirst=True)

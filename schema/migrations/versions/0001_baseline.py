"""Baseline: the catalog as the first release created it (videos without `tag`, jobs).

Revision ID: 0001
Revises:
Create Date: 2026-11-22

Reconstructed from schema/catalog.py at commit 1cb69a5 (what its `Base.metadata.create_all` emitted); catalogs made
before migrations existed are stamped with this revision when they have no `counters` table.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the model's enums: native ENUM types on PostgreSQL, VARCHAR (longest value) on SQLite.
VIDEO_STATUS = sa.Enum("queued", "processing", "ready", "failed", name="videostatus")
JOB_STATE = sa.Enum("queued", "running", "done", "failed", name="jobstate")


def upgrade() -> None:
    op.create_table(
        "videos",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("stored_path", sa.Text(), nullable=False),
        sa.Column("owned", sa.Boolean(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("duration", sa.Float(), nullable=True),
        sa.Column("fps", sa.Float(), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("codec", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("status", VIDEO_STATUS, nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_videos_sha256", "videos", ["sha256"], unique=True)
    op.create_index("ix_videos_status", "videos", ["status"])
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("video_id", sa.Integer(), nullable=False),
        sa.Column("state", JOB_STATE, nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("worker", sa.String(length=128), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["video_id"], ["videos.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_jobs_state", "jobs", ["state"])
    op.create_index("ix_jobs_video_id", "jobs", ["video_id"])


def downgrade() -> None:
    op.drop_table("jobs")
    op.drop_table("videos")
    # drop_table leaves PostgreSQL's enum types behind (no-op elsewhere).
    JOB_STATE.drop(op.get_bind(), checkfirst=True)
    VIDEO_STATUS.drop(op.get_bind(), checkfirst=True)

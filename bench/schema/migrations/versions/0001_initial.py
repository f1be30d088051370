"""Create the weights, runs and metrics tables.

Revision ID: 0001
Revises:
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "weights",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("arch", sa.String(64), nullable=False),
        sa.Column("source", sa.String(256), nullable=False),
        sa.Column("path", sa.Text(), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("mean", sa.JSON(), nullable=False),
        sa.Column("std", sa.JSON(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_weights_name", "weights", ["name"])

    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("config_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("method", sa.String(64), nullable=False),
        sa.Column("method_options", sa.JSON(), nullable=False),
        sa.Column("backbone", sa.String(64), nullable=False),
        sa.Column("weights_name", sa.String(128), nullable=False),
        sa.Column("weights_id", sa.Integer(), sa.ForeignKey("weights.id"), nullable=True),
        sa.Column("dataset", sa.String(64), nullable=False),
        sa.Column("root", sa.Text(), nullable=False),
        sa.Column("category", sa.String(128), nullable=False),
        sa.Column("layers", sa.String(32), nullable=False),
        sa.Column("image_size", sa.Integer(), nullable=False),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("ended_at", sa.DateTime(), nullable=True),
        sa.Column("wall_time_s", sa.Float(), nullable=True),
        sa.Column("peak_memory_mb", sa.Float(), nullable=True),
        sa.Column("host", sa.String(256), nullable=True),
        sa.Column("versions", sa.JSON(), nullable=False),
        sa.Column("git_revision", sa.String(64), nullable=True),
        sa.Column("log_path", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
    )
    op.create_index("ix_runs_method", "runs", ["method"])
    op.create_index("ix_runs_dataset", "runs", ["dataset"])
    op.create_index("ix_runs_status", "runs", ["status"])

    op.create_table(
        "metrics",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("null_reason", sa.Text(), nullable=True),
        sa.Column("resolution", sa.String(32), nullable=True),
        sa.UniqueConstraint("run_id", "name"),
    )
    op.create_index("ix_metrics_run_id", "metrics", ["run_id"])


def downgrade() -> None:
    op.drop_table("metrics")
    op.drop_table("runs")
    op.drop_table("weights")

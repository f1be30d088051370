"""Add few-shot size, stored anomaly maps, worker tracking and the fine-tuning flag to runs.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("train_shots", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("maps_path", sa.Text(), nullable=True))
        batch.add_column(sa.Column("pid", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("backbone_fine_tuned", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        for column in ("backbone_fine_tuned", "attempts", "heartbeat_at", "pid", "maps_path", "train_shots"):
            batch.drop_column(column)

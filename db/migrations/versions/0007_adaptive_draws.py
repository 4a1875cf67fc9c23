"""adaptive_draws: the log of adaptive head-to-head draws (db.adaptive), one row per item handed to a rater

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 13:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "adaptive_draws",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("rater_id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("assignment_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("seat", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("pair", sa.String(length=420), nullable=False),
        sa.Column("score", sa.Double(), nullable=False),
        sa.Column("n_comparisons", sa.Integer(), nullable=False),
        sa.Column("estimates", sa.JSON(), nullable=False),
        sa.Column("drawn_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["study_id"], ["studies.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["rater_id"], ["raters.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["item_id"], ["study_items.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["assignment_id"], ["assignments.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("assignment_id"),
        sa.UniqueConstraint("study_id", "step"),
        sa.UniqueConstraint("item_id", "seat"),
    )
    op.create_index("ix_adaptive_draws_study_id", "adaptive_draws", ["study_id"])
    op.create_index("ix_adaptive_draws_rater_id", "adaptive_draws", ["rater_id"])
    op.create_index("ix_adaptive_draws_item_id", "adaptive_draws", ["item_id"])


def downgrade() -> None:
    op.drop_index("ix_adaptive_draws_item_id", table_name="adaptive_draws")
    op.drop_index("ix_adaptive_draws_rater_id", table_name="adaptive_draws")
    op.drop_index("ix_adaptive_draws_study_id", table_name="adaptive_draws")
    op.drop_table("adaptive_draws")

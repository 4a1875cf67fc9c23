"""rating_conflicts: submissions turned away because their pair was already rated in another tab

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 10:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rating_conflicts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("rating_id", sa.Integer(), nullable=False),
        sa.Column("rater_id", sa.Integer(), nullable=False),
        sa.Column("submission_id", sa.String(length=64), nullable=False),
        sa.Column("answers", sa.JSON(), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["rating_id"], ["ratings.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["rater_id"], ["raters.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("submission_id"),
    )
    op.create_index("ix_rating_conflicts_rating_id", "rating_conflicts", ["rating_id"])
    op.create_index("ix_rating_conflicts_rater_id", "rating_conflicts", ["rater_id"])


def downgrade() -> None:
    op.drop_index("ix_rating_conflicts_rater_id", table_name="rating_conflicts")
    op.drop_index("ix_rating_conflicts_rating_id", table_name="rating_conflicts")
    op.drop_table("rating_conflicts")

"""memorization audits: runs per (model, training dataset) and each generated image's nearest training image

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 11:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "memorization_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("split", sa.String(length=32), nullable=True),
        sa.Column("extractor", sa.String(length=200), nullable=False),
        sa.Column("threshold", sa.Double(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("memorization_runs") as batch:
        batch.create_index(batch.f("ix_memorization_runs_dataset_id"), ["dataset_id"], unique=False)
        batch.create_index(batch.f("ix_memorization_runs_model_id"), ["model_id"], unique=False)
    op.create_table(
        "memorization_matches",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("generated_image_id", sa.Integer(), nullable=False),
        sa.Column("nearest_case_id", sa.Integer(), nullable=True),
        sa.Column("feature_similarity", sa.Double(), nullable=False),
        sa.Column("pixel_score", sa.Double(), nullable=False),
        sa.Column("is_copy", sa.Boolean(), nullable=False),
        sa.Column("alignment", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["generated_image_id"], ["generated_images.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["nearest_case_id"], ["cases.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["run_id"], ["memorization_runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("run_id", "generated_image_id"),
    )
    with op.batch_alter_table("memorization_matches") as batch:
        batch.create_index(batch.f("ix_memorization_matches_generated_image_id"), ["generated_image_id"], unique=False)
        batch.create_index(batch.f("ix_memorization_matches_run_id"), ["run_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("memorization_matches") as batch:
        batch.drop_index(batch.f("ix_memorization_matches_run_id"))
        batch.drop_index(batch.f("ix_memorization_matches_generated_image_id"))
    op.drop_table("memorization_matches")
    with op.batch_alter_table("memorization_runs") as batch:
        batch.drop_index(batch.f("ix_memorization_runs_model_id"))
        batch.drop_index(batch.f("ix_memorization_runs_dataset_id"))
    op.drop_table("memorization_runs")

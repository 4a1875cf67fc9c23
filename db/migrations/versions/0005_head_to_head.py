"""study_items: the second model's image of head-to-head items (db.head_to_head)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 11:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("study_items") as batch:
        batch.add_column(sa.Column("second_model_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("second_generated_image_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("second_sha256", sa.String(length=64), nullable=True))
        batch.create_foreign_key("fk_study_items_second_model", "models", ["second_model_id"], ["id"])
        batch.create_foreign_key(
            "fk_study_items_second_generated", "generated_images", ["second_generated_image_id"], ["id"]
        )
        batch.create_foreign_key("fk_study_items_second_sha256", "images", ["second_sha256"], ["sha256"])


def downgrade() -> None:
    with op.batch_alter_table("study_items") as batch:
        batch.drop_constraint("fk_study_items_second_sha256", type_="foreignkey")
        batch.drop_constraint("fk_study_items_second_generated", type_="foreignkey")
        batch.drop_constraint("fk_study_items_second_model", type_="foreignkey")
        batch.drop_column("second_sha256")
        batch.drop_column("second_generated_image_id")
        batch.drop_column("second_model_id")

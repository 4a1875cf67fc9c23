"""compare_stages (compare's stage cache, out of jobs) and audit_log (coordinator actions)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 11:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "compare_stages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("comparison", sa.String(length=200), nullable=False),
        sa.Column("stage", sa.String(length=200), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("outputs", sa.JSON(), nullable=False),
        sa.Column("seconds", sa.Double(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("comparison", "stage", "fingerprint"),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("actor", sa.String(length=120), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"], unique=False)
    # compare used to fake finished ``jobs`` rows as its stage cache; move them into their own table.
    jobs = sa.table(
        "jobs",
        sa.column("id", sa.Integer),
        sa.column("kind", sa.String),
        sa.column("status", sa.String),
        sa.column("params", sa.JSON),
        sa.column("result", sa.JSON),
        sa.column("finished_at", sa.DateTime),
    )
    stages = sa.table(
        "compare_stages",
        sa.column("comparison", sa.String),
        sa.column("stage", sa.String),
        sa.column("fingerprint", sa.String),
        sa.column("outputs", sa.JSON),
        sa.column("seconds", sa.Float),
        sa.column("finished_at", sa.DateTime),
    )
    connection = op.get_bind()
    rows = connection.execute(
        sa.select(jobs.c.id, jobs.c.params, jobs.c.result, jobs.c.finished_at)
        .where(jobs.c.kind == "compare", jobs.c.status == "done")
        .order_by(jobs.c.id)
    ).all()
    seen: dict[tuple[str, str, str], dict] = {}
    for _id, params, result, finished_at in rows:
        params = params or {}
        key = (str(params.get("comparison", "")), str(params.get("stage", "")), str(params.get("fingerprint", "")))
        if all(key):
            seen[key] = {"outputs": result or {}, "finished_at": finished_at}
    for (comparison, stage, fingerprint), entry in seen.items():
        connection.execute(
            stages.insert().values(comparison=comparison, stage=stage, fingerprint=fingerprint,
                                   outputs=entry["outputs"], seconds=0.0, finished_at=entry["finished_at"])
        )
    if rows:
        connection.execute(jobs.delete().where(jobs.c.id.in_([row[0] for row in rows])))


def downgrade() -> None:
    op.drop_index("ix_audit_log_at", table_name="audit_log")
    op.drop_table("audit_log")
    op.drop_table("compare_stages")

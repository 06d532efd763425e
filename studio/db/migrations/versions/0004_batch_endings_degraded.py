"""How a batch ended and who resumed it, and which pieces reused a cached image.

Why: a batch's row must tell the same story as its Prefect runs in every ending
(crashed, timed out, cancelled, resumed by whom and when), and a piece made from a
cached asset of an earlier batch must never pass as a fresh one.

- batch.resumes: JSON list of {run_id, by, at, resumes} for every run that resumed it
- batch.degraded: how many of its pieces reused a cached asset
- content_piece.degraded: this piece's image is a cached asset

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("batch", sa.Column("resumes", sa.JSON(), nullable=True))
    op.add_column(
        "batch", sa.Column("degraded", sa.Integer(), nullable=False, server_default="0")
    )
    op.add_column(
        "content_piece",
        sa.Column("degraded", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    with op.batch_alter_table("content_piece") as batch:
        batch.drop_column("degraded")
    with op.batch_alter_table("batch") as batch:
        batch.drop_column("degraded")
        batch.drop_column("resumes")

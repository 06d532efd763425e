"""Durable per-piece progress and storage facts, so a crashed batch resumes without repeats.

Adds the planned spec and each step's result (image, hook, verdict) as JSON, the stored
object's backend, checksum, size and content type, the `needs_sync` mark the
storage-sync flow looks for, and a (avatar_id, created_at, id) index for keyset listing.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("content_piece", sa.Column("spec", sa.JSON(), nullable=True))
    op.add_column("content_piece", sa.Column("image_info", sa.JSON(), nullable=True))
    op.add_column("content_piece", sa.Column("hook_info", sa.JSON(), nullable=True))
    op.add_column("content_piece", sa.Column("verdict_info", sa.JSON(), nullable=True))
    op.add_column("content_piece", sa.Column("storage_backend", sa.String(20), nullable=True))
    op.add_column("content_piece", sa.Column("checksum", sa.String(64), nullable=True))
    op.add_column("content_piece", sa.Column("size_bytes", sa.Integer(), nullable=True))
    op.add_column("content_piece", sa.Column("content_type", sa.String(50), nullable=True))
    op.add_column(
        "content_piece",
        sa.Column("needs_sync", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.create_index("idx_content_piece_needs_sync", "content_piece", ["needs_sync"])
    op.create_index(
        "idx_content_piece_avatar_created_id", "content_piece", ["avatar_id", "created_at", "id"]
    )


def downgrade() -> None:
    op.drop_index("idx_content_piece_avatar_created_id", table_name="content_piece")
    op.drop_index("idx_content_piece_needs_sync", table_name="content_piece")
    with op.batch_alter_table("content_piece") as batch:
        for column in (
            "needs_sync", "content_type", "size_bytes", "checksum", "storage_backend",
            "verdict_info", "hook_info", "image_info", "spec",
        ):
            batch.drop_column(column)

"""Initial schema: avatars, templates, batches, content pieces and the spec's indexes.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "avatar",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("niche", sa.String(50), nullable=False),
        sa.Column("lora_weights_url", sa.Text(), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("cadence", sa.String(20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "template",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("niche", sa.String(50), nullable=False),
        sa.Column("category", sa.String(50), nullable=False),
        sa.Column("tier", sa.String(10), nullable=False),
        sa.Column("platforms", sa.JSON(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("hook_pattern", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
    )
    op.create_index("ix_template_niche", "template", ["niche"])
    op.create_index("ix_template_category", "template", ["category"])
    op.create_table(
        "batch",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("avatar_id", sa.String(36), sa.ForeignKey("avatar.id"), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("step_seconds", sa.JSON(), nullable=False),
        sa.Column("cost_breakdown", sa.JSON(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("requested", sa.Integer(), nullable=False),
        sa.Column("published", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("pending_review", sa.Integer(), nullable=False),
        sa.Column("stand_ins", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_batch_avatar_id", "batch", ["avatar_id"])
    op.create_table(
        "content_piece",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("avatar_id", sa.String(36), sa.ForeignKey("avatar.id"), nullable=False),
        sa.Column("batch_id", sa.String(36), sa.ForeignKey("batch.id"), nullable=False),
        sa.Column("template_id", sa.String(64), nullable=True),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("access_tier", sa.String(10), nullable=False),
        sa.Column("hook_text", sa.Text(), nullable=True),
        sa.Column("safety_rating", sa.String(20), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("provider", sa.String(30), nullable=True),
        sa.Column("storage_key", sa.Text(), nullable=True),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("stand_ins", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    # the spec's "Indexes to Create", both groups, plus the batch lookup resume needs
    op.create_index("idx_content_piece_avatar_id", "content_piece", ["avatar_id"])
    op.create_index("idx_content_piece_access_tier", "content_piece", ["access_tier"])
    op.create_index("idx_content_piece_safety_rating", "content_piece", ["safety_rating"])
    op.create_index("idx_content_piece_created_at", "content_piece", ["created_at"])
    op.create_index(
        "idx_content_piece_avatar_created", "content_piece", ["avatar_id", "created_at"]
    )
    op.create_index("idx_content_piece_batch_id", "content_piece", ["batch_id"])


def downgrade() -> None:
    op.drop_table("content_piece")
    op.drop_table("batch")
    op.drop_table("template")
    op.drop_table("avatar")

"""Avatar profiles, and each piece's image size.

Why: every avatar was the same avatar (issue 18). A LoRA trained on a person needs its
trigger word in every prompt, and each avatar has its own LoRA strength, tier mix,
platforms, run size, daily budget and image settings (workflow, checkpoint, format).
A piece made for TikTok is 9:16, not square, so its row records the size it was made at.

- avatar.trigger_words: JSON list, '[]' for existing avatars (no trigger word, as before)
- avatar.lora_strength: 1.0 for existing avatars
- avatar.tier_mix, platforms ('[]'), pieces_per_run, daily_budget_usd, workflow,
  checkpoint, format: NULL/empty = the studio-wide default, as before
- content_piece.width, content_piece.height: NULL for pieces made before (1024x1024)

Downgrade drops the columns (plain ALTER TABLE ... DROP COLUMN, which SQLite has had
since 3.35: a batch copy of `avatar` would have to drop a table that batches reference).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

AVATAR_COLUMNS = (
    "trigger_words", "lora_strength", "tier_mix", "platforms", "pieces_per_run",
    "daily_budget_usd", "workflow", "checkpoint", "format",
)


def upgrade() -> None:
    empty_list = sa.text("'[]'")
    op.add_column(
        "avatar", sa.Column("trigger_words", sa.JSON(), nullable=False, server_default=empty_list)
    )
    op.add_column(
        "avatar", sa.Column("lora_strength", sa.Float(), nullable=False, server_default="1.0")
    )
    op.add_column("avatar", sa.Column("tier_mix", sa.JSON(), nullable=True))
    op.add_column(
        "avatar", sa.Column("platforms", sa.JSON(), nullable=False, server_default=empty_list)
    )
    op.add_column("avatar", sa.Column("pieces_per_run", sa.Integer(), nullable=True))
    op.add_column("avatar", sa.Column("daily_budget_usd", sa.Float(), nullable=True))
    op.add_column("avatar", sa.Column("workflow", sa.Text(), nullable=True))
    op.add_column("avatar", sa.Column("checkpoint", sa.Text(), nullable=True))
    op.add_column("avatar", sa.Column("format", sa.String(20), nullable=True))
    op.add_column("content_piece", sa.Column("width", sa.Integer(), nullable=True))
    op.add_column("content_piece", sa.Column("height", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("content_piece", "height")
    op.drop_column("content_piece", "width")
    for column in reversed(AVATAR_COLUMNS):
        op.drop_column("avatar", column)

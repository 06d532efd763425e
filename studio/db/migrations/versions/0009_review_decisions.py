"""A held piece records the reviewer's decision, who made it and when.

Why: pieces held as `pending_review` are approved or rejected by a person (issue 19:
the `review` flow's form, `studio review`). The row says what was decided, by whom,
when and why, so the studio's rows, storage and events agree and a second decision on
the same piece is recognised as already made (approving twice publishes once).

- content_piece.review_decision: approve | reject, NULL while undecided
- content_piece.reviewed_by: the reviewer's name (the form's field, or $USER)
- content_piece.reviewed_at: when the decision was applied
- content_piece.review_reason: the reviewer's reason (required for a rejection)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""
import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("content_piece") as batch:
        batch.add_column(sa.Column("review_decision", sa.String(length=10), nullable=True))
        batch.add_column(sa.Column("reviewed_by", sa.String(length=100), nullable=True))
        batch.add_column(sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("review_reason", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("content_piece") as batch:
        batch.drop_column("review_reason")
        batch.drop_column("reviewed_at")
        batch.drop_column("reviewed_by")
        batch.drop_column("review_decision")

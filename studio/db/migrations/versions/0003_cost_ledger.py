"""The cost ledger: one row per provider call that is or may be billed.

Rows are written before a call (reserved) and settled after it (billed or released), so
batch cost, budgets and `studio stats` are sums of what providers billed, including
calls whose output was lost and calls for pieces that failed later.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cost_ledger",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("batch_id", sa.String(36), nullable=True),
        sa.Column("avatar_id", sa.String(36), nullable=True),
        sa.Column("piece_id", sa.String(36), nullable=True),
        sa.Column("piece_ids", sa.JSON(), nullable=False),
        sa.Column("kind", sa.String(20), nullable=False),
        sa.Column("provider", sa.String(30), nullable=False),
        sa.Column("job_id", sa.String(200), nullable=True),
        sa.Column("price_usd", sa.Float(), nullable=False),
        sa.Column("estimate_usd", sa.Float(), nullable=True),
        sa.Column("status", sa.String(10), nullable=False),
        sa.Column("outcome", sa.String(20), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("settled_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("idx_cost_ledger_batch_kind", "cost_ledger", ["batch_id", "kind"])
    op.create_index("idx_cost_ledger_avatar_created", "cost_ledger", ["avatar_id", "created_at"])
    op.create_index("idx_cost_ledger_piece_provider", "cost_ledger", ["piece_id", "provider"])


def downgrade() -> None:
    op.drop_index("idx_cost_ledger_piece_provider", table_name="cost_ledger")
    op.drop_index("idx_cost_ledger_avatar_created", table_name="cost_ledger")
    op.drop_index("idx_cost_ledger_batch_kind", table_name="cost_ledger")
    op.drop_table("cost_ledger")

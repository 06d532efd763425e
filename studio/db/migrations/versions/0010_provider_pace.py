"""The fleet's pace per provider and the history of its limit (issue 20).

- provider_pace: one row per provider: the limit AIMD last put on Prefect's
  `provider:<name>` (current), its ceiling, an operator's own cap (manual_cap), the change
  written before Prefect was told (pending_to/pending_at: crash-safe), the fleet-wide
  Retry-After (throttled_until) and the times the decision reads.
- provider_limit_change: every change (throttled, recovered, applied, manual).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""
import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def _when(name: str) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=True)


def upgrade() -> None:
    op.create_table(
        "provider_pace",
        sa.Column("provider", sa.String(30), primary_key=True),
        sa.Column("ceiling", sa.Integer(), nullable=True),
        sa.Column("current", sa.Integer(), nullable=True),
        sa.Column("manual_cap", sa.Integer(), nullable=True),
        sa.Column("pending_to", sa.Integer(), nullable=True),
        _when("pending_at"),
        _when("throttled_until"),
        sa.Column("last_throttle_limit", sa.Integer(), nullable=True),
        _when("last_throttle_at"),
        _when("last_decrease_at"),
        _when("last_change_at"),
        _when("last_success_at"),
    )
    op.create_table(
        "provider_limit_change",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("provider", sa.String(30), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("from_limit", sa.Integer(), nullable=False),
        sa.Column("to_limit", sa.Integer(), nullable=False),
        sa.Column("reason", sa.String(10), nullable=False),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("retry_after", sa.Float(), nullable=True),
        sa.Column("host", sa.String(120), nullable=True),
        sa.Column("pid", sa.String(20), nullable=True),
    )
    op.create_index("idx_provider_limit_change_at", "provider_limit_change", ["at"])
    op.create_index(
        "idx_provider_limit_change_provider_at", "provider_limit_change", ["provider", "at"]
    )


def downgrade() -> None:
    op.drop_index("idx_provider_limit_change_provider_at", table_name="provider_limit_change")
    op.drop_index("idx_provider_limit_change_at", table_name="provider_limit_change")
    op.drop_table("provider_limit_change")
    op.drop_table("provider_pace")

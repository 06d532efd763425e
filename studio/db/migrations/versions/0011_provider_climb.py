"""How a provider's limit climbs, per provider (issue 20's adaptive limits).

- held_limit: the highest limit that held a whole probe window; a throttling event on a
  limit that climbed past it lowers it no further (studio/providers/aimd.py): the climb
  found the provider's capacity, which did not fall.
- raise_step: how much the last raise added; past the last throttle point each raise
  doubles it, and a call refused under a raise steps the whole raise back.

Null on existing rows: nothing has held yet, and the next raise is +1.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05
"""
import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("provider_pace", sa.Column("held_limit", sa.Integer(), nullable=True))
    op.add_column("provider_pace", sa.Column("raise_step", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("provider_pace", "raise_step")
    op.drop_column("provider_pace", "held_limit")

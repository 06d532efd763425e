"""The limit that held a probe window, per provider (issue 20's adaptive limits).

A throttling event on a limit that climbed past the last one to hold a whole probe
window lowers it no further than that one (studio/providers/aimd.py): the climb found
the provider's capacity, which did not fall. Null on existing rows: nothing has held yet.

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


def downgrade() -> None:
    op.drop_column("provider_pace", "held_limit")

"""The provider lease census: one row per provider slot a pipeline process asks for or holds.

The Prefect server counts a global limit's slots in its database but keeps the leases
that hold them in a separate lease storage (process memory by default), and its API lists
no leases per limit. These rows are the pipeline's own count of the slots it holds, so a
reconcile can free what the server counts beyond them on any server.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "provider_lease",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("provider", sa.String(30), nullable=False),
        sa.Column("holder", sa.String(120), nullable=False),
        sa.Column("lease_id", sa.String(36), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("beat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("released_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(
        "idx_provider_lease_provider_released", "provider_lease", ["provider", "released_at"]
    )
    op.create_index("idx_provider_lease_holder", "provider_lease", ["holder"])


def downgrade() -> None:
    op.drop_index("idx_provider_lease_holder", table_name="provider_lease")
    op.drop_index("idx_provider_lease_provider_released", table_name="provider_lease")
    op.drop_table("provider_lease")

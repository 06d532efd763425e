"""Rows keep object keys, not links: presigned links stored by earlier versions go.

Earlier versions wrote each capa2/capa3 piece's presigned GET (valid for up to 7 days)
into `content_piece.url`; a link to a premium file is a bearer credential and must
not outlive the moment it was asked for (issue 15). `storage_key` stays, and links are
minted on demand (`studio pieces --links`). A capa1 public URL and a local `file://`
link carry no signature and are kept.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "UPDATE content_piece SET url = NULL "
        "WHERE url LIKE '%X-Amz-Signature=%' OR url LIKE '%Signature=%'"
    )


def downgrade() -> None:
    """Nothing to restore: the links had expired or will, and keys were kept."""

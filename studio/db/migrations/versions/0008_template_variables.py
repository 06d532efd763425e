"""Template variables get their own column.

Why: a template's prompt may hold placeholders (`{outfit}`, `{time_of_day}`) filled from
value lists so that one niche's batch of 50 or 100 pieces has as many distinct prompts
(issue 18). The lists belong next to the prompt, as data a query can read, not folded
into the prompt text.

- template.variables: JSON object {name: [values]}, '{}' for every existing template
  (a prompt without placeholders, as before)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""
import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "template",
        sa.Column("variables", sa.JSON(), nullable=False, server_default=sa.text("'{}'")),
    )


def downgrade() -> None:
    op.drop_column("template", "variables")

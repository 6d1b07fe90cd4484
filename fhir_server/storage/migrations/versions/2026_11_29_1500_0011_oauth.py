"""OAuth 2.0 / SMART authorization server: users, clients, keys, tokens (issue 5).

Revision ID: 0011
"""

from __future__ import annotations

from alembic import op  # noqa: F401

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass

"""Roles and permissions per tenant (issue 5).

Revision ID: 0012
"""

from __future__ import annotations

from alembic import op  # noqa: F401

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass

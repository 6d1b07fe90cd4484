"""Indexes on the upper bound of date/number/quantity ranges (prefixes gt, ge, sa filter on ``high``).

Revision ID: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE INDEX idx_date_high ON idx_date (tenant_id, resource_type, param, high)")
    op.execute("CREATE INDEX idx_number_high ON idx_number (tenant_id, resource_type, param, high)")
    op.execute("CREATE INDEX idx_quantity_high ON idx_quantity (tenant_id, resource_type, param, high)")


def downgrade() -> None:
    for name in ("idx_date_high", "idx_number_high", "idx_quantity_high"):
        op.execute(f"DROP INDEX {name}")

"""Tenants and facilities (issue 5): a tenant's status, and the lookup a facility filter uses.

* ``tenant.status``: ``active`` (served) or ``suspended`` (its URLs answer 404, its data stays).
  ``tenant.name`` and ``tenant.created_at`` exist since the initial schema.
* ``idx_token_security``: facility scoping (``fhir_server.auth.visibility``) asks, per resource row,
  for its ``_security`` rows of the facility system; a partial index on just those rows keeps the
  probe to the few label rows instead of every token row of the resource.

Revision ID: 0010
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "ALTER TABLE tenant ADD COLUMN IF NOT EXISTS status text NOT NULL DEFAULT 'active' "
        "CONSTRAINT tenant_status_check CHECK (status IN ('active', 'suspended'))"
    )
    op.execute(
        "CREATE INDEX IF NOT EXISTS idx_token_security ON idx_token (tenant_id, resource_type, resource_id, system, code) "
        "WHERE param = '_security'"
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS idx_token_security")
    op.execute("ALTER TABLE tenant DROP COLUMN IF EXISTS status")

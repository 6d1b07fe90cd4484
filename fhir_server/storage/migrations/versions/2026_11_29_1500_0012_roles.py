"""Roles and permissions per tenant (issue 5): a tenant's overrides of the shipped role defaults.

One row per (tenant, role, resource type or ``*``, effect): the interactions and operations the
tenant grants to or denies the role on that type (``fhir_server/auth/permissions.py`` for the
precedence). Writers ``NOTIFY fhir_role_permission, '<tenant>'`` in the same transaction, so
every server process drops its cached policy for the tenant (``fhir_server/auth/role_overrides.py``).

Revision ID: 0012
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE role_permission (
            tenant_id text NOT NULL,
            role text NOT NULL CHECK (role ~ '^[a-z][a-z0-9-]{0,63}$'),
            resource_type text NOT NULL,          -- an R4 resource type, or '*' for every type
            effect text NOT NULL CHECK (effect IN ('grant', 'deny')),
            interactions text[] NOT NULL DEFAULT '{}',   -- read vread search history create update patch delete
            operations text[] NOT NULL DEFAULT '{}',     -- operation names or patterns, without '$'
            updated timestamptz NOT NULL DEFAULT now(),
            updated_by text,
            PRIMARY KEY (tenant_id, role, resource_type, effect)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE role_permission")

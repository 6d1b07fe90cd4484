"""The audit trail: one row per FHIR interaction (read, search, history, write, failure).

Typed columns for who / what / when / outcome (AuditEvent.action, outcome, agent, entity);
successful writes insert their row in the same statement as the write itself.

Revision ID: 0005
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE audit_event (
            tenant_id text NOT NULL,
            recorded timestamptz NOT NULL,
            id uuid NOT NULL DEFAULT gen_random_uuid(),
            action char(1) NOT NULL,          -- AuditEvent.action: C R U D E
            interaction text NOT NULL,        -- read, vread, create, update, patch, delete, search-type, history-…
            outcome text NOT NULL,            -- AuditEvent.outcome: 0 success, 4 minor failure, 8 serious failure
            status integer,                   -- the HTTP status answered
            agent text NOT NULL,              -- who: the token's subject (or 'development-mode')
            request_id text,
            method text NOT NULL,
            path text NOT NULL,               -- without the query string (it can carry patient data)
            resource_type text,
            resource_id text,
            version_id integer,
            PRIMARY KEY (tenant_id, recorded, id)
        );
        CREATE INDEX audit_event_entity ON audit_event (tenant_id, resource_type, resource_id, recorded);
        CREATE INDEX audit_event_agent ON audit_event (tenant_id, agent, recorded);
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE audit_event")

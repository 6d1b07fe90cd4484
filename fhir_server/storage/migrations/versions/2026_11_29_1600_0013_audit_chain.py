"""Audit trail: AuditEvent columns, append-only tables, the per-tenant hash chain (issue 5).

``audit_event`` gets the columns an AuditEvent needs beyond who/what/when (README "Audit trail"):
``type`` (rest, or 110114 user authentication), the agent's FHIR identity, OAuth client, role and
network address, the purpose of use, the PATIENT the data belongs to, and ``txid``: the id of the
transaction that inserted the row (``pg_current_xact_id()``), which lets the sealer take rows in
commit-safe order without any lock in the write path (``fhir_server.audit.chain``).

``audit_seal`` is the hash chain, per tenant: each audit row is one link,
``hash = sha256(previous link's hash || canonical bytes of the audit row)``; one ``audit_seal`` row
(``seq``) holds the links of one sealing step (the rows' keys and their 32-byte hashes as arrays):
one tuple and one index entry per step instead of per audit row (measured in README "Audit trail").

Both tables refuse UPDATE, DELETE and TRUNCATE (a trigger raising ``insufficient_privilege``).
Adding ``txid`` with a volatile default rewrites ``audit_event`` once (existing rows get this
migration's transaction id and are sealed by the first sealing pass).

Revision ID: 0013
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        ALTER TABLE audit_event
            ADD COLUMN type text NOT NULL DEFAULT 'rest',   -- AuditEvent.type: rest | 110114 (user authentication)
            ADD COLUMN fhir_user text,                      -- the agent's FHIR identity (Practitioner/123)
            ADD COLUMN client_id text,                      -- the OAuth client the token was issued to
            ADD COLUMN role text,                           -- the agent's role
            ADD COLUMN network text,                        -- the agent's network address
            ADD COLUMN purpose text[],                      -- purpose of use codes (system|code or v3-ActReason code)
            ADD COLUMN patient text,                        -- the Patient id the data belongs to
            ADD COLUMN txid xid8 NOT NULL DEFAULT pg_current_xact_id();
        CREATE INDEX audit_event_txid ON audit_event (tenant_id, txid);
        CREATE INDEX audit_event_patient ON audit_event (tenant_id, patient, recorded) WHERE patient IS NOT NULL;
        CREATE INDEX audit_event_fhir_user ON audit_event (tenant_id, fhir_user, recorded) WHERE fhir_user IS NOT NULL;

        CREATE TABLE audit_seal (
            tenant_id text NOT NULL,
            seq bigint NOT NULL,                  -- 1, 2, 3 ... per tenant, no gaps: one sealing step each
            first_link bigint NOT NULL,           -- the chain position of its first row (rows are links 1, 2, 3 ...)
            audit_recorded timestamptz[] NOT NULL, -- the sealed rows' keys (tenant_id, recorded, id), in chain order
            audit_id uuid[] NOT NULL,
            last_txid xid8 NOT NULL,              -- the last row's (txid, recorded, id): where the next step continues
            last_recorded timestamptz NOT NULL,
            last_id uuid NOT NULL,
            hashes bytea NOT NULL,                -- 32 bytes per row: sha256(previous hash || canonical row bytes)
            sealed_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant_id, seq)
        );
        CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '% on % is refused: the audit trail is append-only', TG_OP, TG_TABLE_NAME
                USING ERRCODE = 'insufficient_privilege';
        END
        $$;
        CREATE TRIGGER audit_event_append_only BEFORE UPDATE OR DELETE ON audit_event
            FOR EACH ROW EXECUTE FUNCTION audit_append_only();
        CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON audit_event
            FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
        CREATE TRIGGER audit_seal_append_only BEFORE UPDATE OR DELETE ON audit_seal
            FOR EACH ROW EXECUTE FUNCTION audit_append_only();
        CREATE TRIGGER audit_seal_no_truncate BEFORE TRUNCATE ON audit_seal
            FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only();
        """
    )


def downgrade() -> None:
    op.execute(
        """
        DROP TRIGGER audit_event_append_only ON audit_event;
        DROP TRIGGER audit_event_no_truncate ON audit_event;
        DROP TABLE audit_seal;
        DROP FUNCTION audit_append_only();
        DROP INDEX audit_event_txid;
        DROP INDEX audit_event_patient;
        DROP INDEX audit_event_fhir_user;
        ALTER TABLE audit_event DROP COLUMN type, DROP COLUMN fhir_user, DROP COLUMN client_id, DROP COLUMN role,
            DROP COLUMN network, DROP COLUMN purpose, DROP COLUMN patient, DROP COLUMN txid;
        """
    )

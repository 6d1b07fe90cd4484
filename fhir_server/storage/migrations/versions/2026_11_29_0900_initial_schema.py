"""Initial schema: tenants, resources with full history, typed search-index tables.

Every primary key and index leads with ``tenant_id`` so the schema can be distributed
by tenant (Citus ``create_distributed_table(..., 'tenant_id')``) without redesign.

Revision ID: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_IDX_COLS = "tenant_id text NOT NULL, resource_type text NOT NULL, resource_id text NOT NULL, param text NOT NULL"

SQL = f"""
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE tenant (
    id text PRIMARY KEY,
    name text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO tenant (id, name) VALUES ('default', 'Default tenant');

-- the current version of every resource (deleted ones stay, flagged, so reads answer 410)
CREATE TABLE resource (
    tenant_id text NOT NULL,
    resource_type text NOT NULL,
    id text NOT NULL,
    version_id integer NOT NULL,
    last_updated timestamptz NOT NULL,
    deleted boolean NOT NULL DEFAULT false,
    content jsonb,
    PRIMARY KEY (tenant_id, resource_type, id)
);
CREATE INDEX resource_type_updated ON resource (tenant_id, resource_type, last_updated);

-- every version, the current one included; method is the interaction that made it
CREATE TABLE resource_history (
    tenant_id text NOT NULL,
    resource_type text NOT NULL,
    id text NOT NULL,
    version_id integer NOT NULL,
    last_updated timestamptz NOT NULL,
    deleted boolean NOT NULL DEFAULT false,
    method text NOT NULL,
    content jsonb,
    PRIMARY KEY (tenant_id, resource_type, id, version_id)
);
CREATE INDEX resource_history_system ON resource_history (tenant_id, last_updated);
CREATE INDEX resource_history_type ON resource_history (tenant_id, resource_type, last_updated);

-- search index: one table per SearchParameter type, rewritten with each write
CREATE TABLE idx_string ({_IDX_COLS}, value_norm text NOT NULL, value_exact text NOT NULL);
CREATE INDEX idx_string_lookup ON idx_string (tenant_id, resource_type, param, value_norm text_pattern_ops);
CREATE INDEX idx_string_trgm ON idx_string USING gin (value_norm gin_trgm_ops);
CREATE INDEX idx_string_owner ON idx_string (tenant_id, resource_type, resource_id);

CREATE TABLE idx_token ({_IDX_COLS}, system text, code text, text text);
CREATE INDEX idx_token_lookup ON idx_token (tenant_id, resource_type, param, code, system);
CREATE INDEX idx_token_owner ON idx_token (tenant_id, resource_type, resource_id);

CREATE TABLE idx_reference ({_IDX_COLS}, target_type text, target_id text, target_version text, url text);
CREATE INDEX idx_reference_lookup ON idx_reference (tenant_id, resource_type, param, target_id, target_type);
CREATE INDEX idx_reference_url ON idx_reference (tenant_id, resource_type, param, url);
CREATE INDEX idx_reference_target ON idx_reference (tenant_id, target_type, target_id);
CREATE INDEX idx_reference_owner ON idx_reference (tenant_id, resource_type, resource_id);

CREATE TABLE idx_date ({_IDX_COLS}, low timestamptz NOT NULL, high timestamptz NOT NULL);
CREATE INDEX idx_date_lookup ON idx_date (tenant_id, resource_type, param, low, high);
CREATE INDEX idx_date_owner ON idx_date (tenant_id, resource_type, resource_id);

CREATE TABLE idx_number ({_IDX_COLS}, value numeric NOT NULL, low numeric NOT NULL, high numeric NOT NULL);
CREATE INDEX idx_number_lookup ON idx_number (tenant_id, resource_type, param, low, high);
CREATE INDEX idx_number_owner ON idx_number (tenant_id, resource_type, resource_id);

CREATE TABLE idx_quantity ({_IDX_COLS}, system text, code text, unit text,
                           value numeric NOT NULL, low numeric NOT NULL, high numeric NOT NULL);
CREATE INDEX idx_quantity_lookup ON idx_quantity (tenant_id, resource_type, param, code, low, high);
CREATE INDEX idx_quantity_owner ON idx_quantity (tenant_id, resource_type, resource_id);

CREATE TABLE idx_uri ({_IDX_COLS}, value text NOT NULL);
CREATE INDEX idx_uri_lookup ON idx_uri (tenant_id, resource_type, param, value);
CREATE INDEX idx_uri_owner ON idx_uri (tenant_id, resource_type, resource_id);
"""


def upgrade() -> None:
    op.execute(SQL)


def downgrade() -> None:
    for table in (
        "idx_uri", "idx_quantity", "idx_number", "idx_date", "idx_reference",
        "idx_token", "idx_string", "resource_history", "resource", "tenant",
    ):
        op.execute(f"DROP TABLE IF EXISTS {table}")

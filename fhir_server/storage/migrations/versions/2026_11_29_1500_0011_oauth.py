"""OAuth 2.0 / SMART authorization server: users, clients, keys, tokens (issue 5).

Secrets never stored in the clear: passwords as argon2id hashes, authorization codes and refresh
tokens as SHA-256 digests (they are 256-bit random strings, so a plain digest is enough).

Revision ID: 0011
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE auth_user (
            tenant_id text NOT NULL,
            username text NOT NULL,
            password_hash text NOT NULL,          -- argon2id (PHC string)
            role text NOT NULL,                   -- the role the permission matrix applies
            fhir_user text,                       -- Practitioner/123, PractitionerRole/…, Patient/…
            facilities text[],                    -- Organization/Location ids; NULL: the whole tenant
            active boolean NOT NULL DEFAULT true,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (tenant_id, username)
        );

        CREATE TABLE oauth_client (
            client_id text PRIMARY KEY,
            tenant_id text NOT NULL,
            name text NOT NULL DEFAULT '',
            client_type text NOT NULL CHECK (client_type IN ('public', 'confidential')),
            token_endpoint_auth_method text NOT NULL CHECK (token_endpoint_auth_method IN ('none', 'private_key_jwt')),
            grant_types text[] NOT NULL,
            redirect_uris text[] NOT NULL DEFAULT '{}',
            allowed_scopes text NOT NULL DEFAULT '',   -- space-separated
            jwks jsonb,                                 -- the client's public keys (private_key_jwt)
            jwks_uri text,
            role text,                                  -- backend services: the role of their tokens
            fhir_user text,                             -- backend services: e.g. Device/123
            active boolean NOT NULL DEFAULT true,
            created_at timestamptz NOT NULL DEFAULT now(),
            CHECK ((token_endpoint_auth_method = 'none') = (client_type = 'public'))
        );
        CREATE INDEX oauth_client_tenant ON oauth_client (tenant_id, client_id);

        CREATE TABLE oauth_code (
            code_hash bytea PRIMARY KEY,
            grant_id uuid NOT NULL,               -- the refresh-token family it starts
            tenant_id text NOT NULL,
            client_id text NOT NULL,
            username text NOT NULL,
            redirect_uri text,
            scope text NOT NULL,
            aud text,
            code_challenge text NOT NULL,
            code_challenge_method text NOT NULL,
            nonce text,
            launch_patient text,
            auth_time timestamptz NOT NULL,
            expires_at timestamptz NOT NULL,
            used_at timestamptz
        );

        CREATE TABLE oauth_refresh_token (
            token_hash bytea PRIMARY KEY,
            grant_id uuid NOT NULL,               -- all rotations of one authorization
            tenant_id text NOT NULL,
            client_id text NOT NULL,
            username text NOT NULL,
            scope text NOT NULL,
            aud text,
            launch_patient text,
            issued_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz NOT NULL,
            used_at timestamptz,                  -- rotated: exchanged for a new one
            revoked_at timestamptz
        );
        CREATE INDEX oauth_refresh_token_grant ON oauth_refresh_token (grant_id);

        -- access tokens (JWTs) revoked before their exp (RFC 7009); rows go once exp has passed
        CREATE TABLE oauth_revoked_jti (
            jti text PRIMARY KEY,
            expires_at timestamptz NOT NULL,
            revoked_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX oauth_revoked_jti_revoked ON oauth_revoked_jti (revoked_at);

        -- private_key_jwt client assertions seen (RFC 7523 §3 item 7: jti used once)
        CREATE TABLE oauth_assertion_jti (
            client_id text NOT NULL,
            jti text NOT NULL,
            expires_at timestamptz NOT NULL,
            PRIMARY KEY (client_id, jti)
        );

        -- the server's token-signing keys; retired keys stay published until their tokens expired
        CREATE TABLE oauth_signing_key (
            kid text PRIMARY KEY,
            alg text NOT NULL,
            private_jwk jsonb NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            retired_at timestamptz
        );
        CREATE UNIQUE INDEX oauth_signing_key_one_active ON oauth_signing_key ((true)) WHERE retired_at IS NULL;
        """
    )


def downgrade() -> None:
    op.execute(
        "DROP TABLE oauth_signing_key, oauth_assertion_jti, oauth_revoked_jti, oauth_refresh_token, "
        "oauth_code, oauth_client, auth_user"
    )

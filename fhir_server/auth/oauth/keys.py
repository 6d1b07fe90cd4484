"""The server's token-signing keys (ES256), kept in ``oauth_signing_key`` and shared by every process.

One key signs (``retired_at IS NULL``); ``rotate`` makes a new one and retires the old one, which
stays published at ``/auth/jwks`` and accepted for verification until every token it signed has
expired (``VERIFY_GRACE``). The private JWKs sit in the database like the rest of the server's
secrets (``server_secret``): whoever reads the database can mint tokens, so guard it accordingly.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
from joserfc.jwk import ECKey, KeySet
from psycopg.types.json import Jsonb

__all__ = ["ALGORITHM", "ServerKeys", "ensure_signing_key", "load_server_keys", "rotate"]

ALGORITHM = "ES256"
# a retired key verifies tokens this much longer than the longest token lifetime it may have signed
VERIFY_GRACE = timedelta(days=1)
# advisory lock id for key creation (so two workers starting together make one key)
_LOCK = 0x6F617574  # "oaut"


@dataclass(frozen=True, slots=True)
class ServerKeys:
    signing: ECKey  # the key new tokens are signed with
    verify: KeySet  # the signing key and the retired keys still within their grace period

    def public_jwks(self) -> dict[str, Any]:
        return {"keys": [k.as_dict(private=False) for k in self.verify.keys]}


def _new_key() -> ECKey:
    return ECKey.generate_key("P-256", {"alg": ALGORITHM, "use": "sig"}, private=True, auto_kid=True)


def ensure_signing_key(conn: psycopg.Connection[Any]) -> None:
    """Make the first signing key if there is none (idempotent, safe with concurrent callers)."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        row = conn.execute("SELECT 1 FROM oauth_signing_key WHERE retired_at IS NULL").fetchone()
        if row is None:
            key = _new_key()
            conn.execute(
                "INSERT INTO oauth_signing_key (kid, alg, private_jwk) VALUES (%s, %s, %s)",
                (key.kid, ALGORITHM, Jsonb(key.as_dict(private=True))),
            )


def rotate(conn: psycopg.Connection[Any]) -> str:
    """A new signing key; the current one is retired (still verifying). Returns the new kid."""
    key = _new_key()
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        conn.execute("UPDATE oauth_signing_key SET retired_at = now() WHERE retired_at IS NULL")
        conn.execute(
            "INSERT INTO oauth_signing_key (kid, alg, private_jwk) VALUES (%s, %s, %s)",
            (key.kid, ALGORITHM, Jsonb(key.as_dict(private=True))),
        )
    return str(key.kid)


def load_server_keys(conn: psycopg.Connection[Any], max_token_lifetime: timedelta) -> ServerKeys:
    ensure_signing_key(conn)
    rows = conn.execute(
        "SELECT private_jwk, retired_at IS NULL FROM oauth_signing_key "
        "WHERE retired_at IS NULL OR retired_at > now() - %s ORDER BY created_at DESC",
        (max_token_lifetime + VERIFY_GRACE,),
    ).fetchall()
    keys = [ECKey.import_key(jwk) for jwk, _ in rows]
    signing = next(k for k, (_, active) in zip(keys, rows, strict=True) if active)
    return ServerKeys(signing, KeySet(keys))


def list_keys(conn: psycopg.Connection[Any]) -> list[tuple[str, str, Any, Any]]:
    return [tuple(r) for r in conn.execute(  # type: ignore[misc]
        "SELECT kid, alg, created_at, retired_at FROM oauth_signing_key ORDER BY created_at"
    ).fetchall()]

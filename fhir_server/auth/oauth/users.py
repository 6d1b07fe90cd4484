"""People who log in at ``/auth/login``: one row per (tenant, username), passwords as argon2id.

argon2-cffi's ``PasswordHasher`` defaults follow RFC 9106's second recommended option
(argon2id, 64 MiB, 3 passes); ``needs_rehash`` upgrades old hashes at the next login.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

__all__ = ["User", "add_user", "authenticate", "get_user", "list_users", "set_active", "set_password", "validate_user_fields"]

_HASHER = PasswordHasher()
# verified against when the username is unknown, so a miss costs the same time as a wrong password
_DUMMY_HASH = _HASHER.hash("not-a-password")
USERNAME = re.compile(r"^[A-Za-z0-9._@\-]{1,128}$")
FHIR_REF = re.compile(r"^[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,64}$")
MIN_PASSWORD = 12


@dataclass(frozen=True, slots=True)
class User:
    tenant: str
    username: str
    role: str
    fhir_user: str | None
    facilities: tuple[str, ...] | None
    active: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant, "username": self.username, "role": self.role, "fhirUser": self.fhir_user,
            "facilities": list(self.facilities) if self.facilities is not None else None, "active": self.active,
        }


_COLUMNS = "tenant_id, username, role, fhir_user, facilities, active"


def _user(row: Any) -> User:
    return User(row[0], row[1], row[2], row[3], tuple(row[4]) if row[4] is not None else None, row[5])


def validate_user_fields(username: str, password: str | None, fhir_user: str | None) -> None:
    if not USERNAME.match(username):
        raise ValueError("username: 1-128 characters of letters, digits, '.', '_', '@', '-'")
    if password is not None and len(password) < MIN_PASSWORD:
        raise ValueError(f"password: at least {MIN_PASSWORD} characters")
    if fhir_user is not None and not FHIR_REF.match(fhir_user):
        raise ValueError("fhirUser: a relative reference such as Practitioner/123")


def add_user(
    conn: psycopg.Connection[Any], *, tenant: str, username: str, password: str, role: str,
    fhir_user: str | None = None, facilities: list[str] | None = None,
) -> User:
    validate_user_fields(username, password, fhir_user)
    row = conn.execute(
        "INSERT INTO auth_user (tenant_id, username, password_hash, role, fhir_user, facilities) "
        f"VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING RETURNING {_COLUMNS}",
        (tenant, username, _HASHER.hash(password), role, fhir_user, facilities),
    ).fetchone()
    if row is None:
        raise ValueError(f"user {username!r} exists already in tenant {tenant!r}")
    return _user(row)


def get_user(conn: psycopg.Connection[Any], tenant: str, username: str) -> User | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM auth_user WHERE tenant_id = %s AND username = %s", (tenant, username)).fetchone()
    return _user(row) if row else None


def list_users(conn: psycopg.Connection[Any], tenant: str) -> list[User]:
    rows = conn.execute(f"SELECT {_COLUMNS} FROM auth_user WHERE tenant_id = %s ORDER BY username", (tenant,)).fetchall()
    return [_user(r) for r in rows]


def set_active(conn: psycopg.Connection[Any], tenant: str, username: str, active: bool) -> bool:
    """Disabling a user also revokes their refresh tokens (access tokens end at their ``exp``)."""
    with conn.transaction():
        cur = conn.execute(
            "UPDATE auth_user SET active = %s, updated_at = now() WHERE tenant_id = %s AND username = %s",
            (active, tenant, username),
        )
        if not active:
            conn.execute(
                "UPDATE oauth_refresh_token SET revoked_at = now() WHERE tenant_id = %s AND username = %s AND revoked_at IS NULL",
                (tenant, username),
            )
    return cur.rowcount == 1


def set_password(conn: psycopg.Connection[Any], tenant: str, username: str, password: str) -> bool:
    validate_user_fields(username, password, None)
    with conn.transaction():
        cur = conn.execute(
            "UPDATE auth_user SET password_hash = %s, updated_at = now() WHERE tenant_id = %s AND username = %s",
            (_HASHER.hash(password), tenant, username),
        )
        conn.execute(
            "UPDATE oauth_refresh_token SET revoked_at = now() WHERE tenant_id = %s AND username = %s AND revoked_at IS NULL",
            (tenant, username),
        )
    return cur.rowcount == 1


def authenticate(conn: psycopg.Connection[Any], tenant: str, username: str, password: str) -> User | None:
    """The active user whose password this is, or None (same cost whether the user exists or not)."""
    row = conn.execute(
        f"SELECT password_hash, {_COLUMNS} FROM auth_user WHERE tenant_id = %s AND username = %s", (tenant, username)
    ).fetchone()
    stored = row[0] if row else _DUMMY_HASH
    try:
        _HASHER.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return None
    if row is None:
        return None
    user = _user(row[1:])
    if not user.active:
        return None
    if _HASHER.check_needs_rehash(stored):
        conn.execute(
            "UPDATE auth_user SET password_hash = %s WHERE tenant_id = %s AND username = %s",
            (_HASHER.hash(password), tenant, username),
        )
    return user

"""Who may read the audit trail (``GET [base]/AuditEvent``): auditors only, by default.

One small function on purpose: the role-permission module (``fhir_server.auth.permissions``) can
replace it. The default leaves out ``admin`` (separation of duties: whoever administers users and
data does not also read the record of what they did); a deployment that wants otherwise sets
``FHIR_AUDIT_READER_ROLES=auditor,admin``. Development mode (no authentication) reads everything.
"""

from __future__ import annotations

from typing import Any


def reader_roles(settings: Any) -> frozenset[str]:
    raw = getattr(settings, "audit_reader_roles", "auditor")
    return frozenset(r.strip() for r in str(raw).split(",") if r.strip())


def may_read_audit_trail(principal: Any, settings: Any) -> bool:
    if principal is None:
        return bool(getattr(settings, "dev_mode", False))
    return getattr(principal, "role", None) in reader_roles(settings)

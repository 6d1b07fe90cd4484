"""The id a Reference gives for one resource type (R4 references.html#literal), for every workflow."""

from __future__ import annotations

from typing import Any

from fhir_server.search.references import parse_reference


def ref_id(reference: Any, resource_type: str) -> str | None:
    """``Slot/12`` (a Reference or its string; relative, versioned or the tail of an absolute URL)
    → ``12`` when it points at ``resource_type``; else None."""
    ref = reference.get("reference") if isinstance(reference, dict) else reference
    parts = parse_reference(ref) if isinstance(ref, str) else None
    return parts[1] if parts and parts[0] == resource_type else None

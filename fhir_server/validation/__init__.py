"""Validation of FHIR R4 (4.0.1) resources, built from the official StructureDefinitions.

    from fhir_server.validation import validate_resource, Validator
    issues = validate_resource(resource_dict)        # base R4 rules; default Validator built once
    v = Validator(); v.add_structure_definition(sd); v.validate(resource_dict, profiles=[url])

Only issues with severity ``error``/``fatal`` make a write fail. See README.md in this folder.
"""

from __future__ import annotations

import threading
from typing import Any

from fhir_server.errors import Issue

from .validator import Validator

__all__ = ["Validator", "default_validator", "has_errors", "validate_resource"]

_default: Validator | None = None
_lock = threading.Lock()


def default_validator() -> Validator:
    """The process-wide Validator over the packaged base definitions, built on first use."""
    global _default
    if _default is None:
        with _lock:
            if _default is None:
                _default = Validator()
    return _default


def validate_resource(resource: Any, profiles: list[str] | None = None) -> list[Issue]:
    """Validate a parsed FHIR JSON resource against base R4 (and ``profiles`` if given)."""
    return default_validator().validate(resource, profiles)


def has_errors(issues: list[Issue]) -> bool:
    return any(i.severity in ("error", "fatal") for i in issues)

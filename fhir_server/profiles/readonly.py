"""Write guard (``fhir_server.services.hooks``): the packaged definitions are read-only in every tenant.

A create, update, patch or delete of a StructureDefinition, CodeSystem or ValueSet whose id or url is
a packaged one (``catalog.py``) is refused with 403 — whatever the path (REST, bundles, HL7) — unless
it is the seeding itself (``serving.SEED_AGENT`` acting as a SYSTEM actor, never a request).
"""

from __future__ import annotations

from fhir_server.errors import Forbidden
from fhir_server.services.hooks import WriteEvent, guard

from .catalog import SERVED_TYPES, catalog
from .serving import SEED_AGENT


@guard(*SERVED_TYPES)
def packaged_definitions_are_read_only(event: WriteEvent) -> None:
    actor = event.actor
    if actor.agent == SEED_AGENT and actor.method == "SYSTEM" and actor.request_id is None:
        return
    cat = catalog()
    urls = [r.get("url") for r in (event.before, event.after) if isinstance(r, dict)]
    if cat.is_packaged(event.resource_type, event.resource_id, None) or any(
        cat.is_packaged(event.resource_type, None, u) for u in urls
    ):
        raise Forbidden(
            f"{event.resource_type}/{event.resource_id} is a packaged project definition and read-only",
            expression=f"{event.resource_type}.url",
        )

"""Write hooks: the seam where workflow rules meet every write.

Hospital workflows need rules that hold however a resource is written — REST create/update/patch/
delete, a transaction or batch Bundle, the HL7 bridge: a finalized prescription item may not be
edited, an Appointment moves only along its allowed transitions, an active lab order puts an HL7
message in the outbox. Two kinds of hook, registered per resource type:

* ``@guard("Appointment")`` — ``fn(event) -> None``, synchronous and pure (no database): raise a
  ``fhir_server.errors.FhirError`` to refuse the write. Runs before anything is stored.
* ``@after_write("ServiceRequest")`` — ``async fn(conn, service, event) -> None``: runs right after
  the write on the SAME connection, inside the SAME transaction (``service`` is the acting
  ``ResourceService`` bound to ``conn``, so what a hook writes is validated, indexed and audited like
  any write, and it all commits or rolls back together). When a type has after-write hooks, the
  single-resource interactions run in a transaction (otherwise they keep their one-statement path).

Hook modules are named in ``HOOK_MODULES`` and imported lazily on the first write of each process
(the REST workers, the HL7 listener, the command line), so every path has the same rules. The bulk
COPY import (``fhir_server.transfer.bulk_load``) bypasses hooks: it loads data that is already final.

A write a hook refuses leaves nothing behind; a hook's own error rolls the write back.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fhir_server.audit.actor import Actor

if TYPE_CHECKING:
    from fhir_server.services.resources import ResourceService

__all__ = ["HOOK_MODULES", "WriteEvent", "after_write", "afters_for", "guard", "guards_for", "has_after", "has_hooks", "run_guards"]

# dotted module names whose import registers hooks (append yours)
HOOK_MODULES: tuple[str, ...] = (
    "hl7_bridge.outbound.hook",  # ServiceRequest active/held/revoked → HL7 outbox (issue 6 Outbound)
    "fhir_server.profiles.readonly",  # packaged project definitions are read-only
    "fhir_server.workflows.availability.hooks",
    "fhir_server.workflows.appointments.rules",  # booking, slots, status machine, check-in (issue 7)
    "fhir_server.workflows.pharmacy.hooks",  # finalized prescription lock, dispense quantities (issue 8)
)


@dataclass(frozen=True, slots=True)
class WriteEvent:
    tenant: str
    resource_type: str
    resource_id: str
    before: dict[str, Any] | None  # the current content (None: a create, or the resource was deleted)
    after: dict[str, Any] | None  # the content being written (None: a delete); stamped id/meta after the write
    method: str  # POST | PUT | PATCH | DELETE
    actor: Actor

    @property
    def created(self) -> bool:
        return self.before is None and self.after is not None


Guard = Callable[[WriteEvent], None]
After = Callable[[Any, "ResourceService", WriteEvent], Awaitable[None]]

_guards: dict[str, list[Guard]] = {}
_afters: dict[str, list[After]] = {}
_loaded = False
_lock = threading.Lock()


def _load() -> None:
    """Import ``HOOK_MODULES`` once per process (on the first call that asks for hooks)."""
    global _loaded
    if _loaded:
        return
    with _lock:
        if not _loaded:
            for name in HOOK_MODULES:
                importlib.import_module(name)
            _loaded = True


def guard(*resource_types: str) -> Callable[[Guard], Guard]:
    def register(fn: Guard) -> Guard:
        for t in resource_types:
            _guards.setdefault(t, []).append(fn)
        return fn
    return register


def after_write(*resource_types: str) -> Callable[[After], After]:
    def register(fn: After) -> After:
        for t in resource_types:
            _afters.setdefault(t, []).append(fn)
        return fn
    return register


def has_hooks(resource_type: str) -> bool:
    _load()
    return resource_type in _guards or resource_type in _afters


def has_after(resource_type: str) -> bool:
    _load()
    return resource_type in _afters


def guards_for(resource_type: str) -> list[Guard]:
    _load()
    return _guards.get(resource_type, [])


def afters_for(resource_type: str) -> list[After]:
    _load()
    return _afters.get(resource_type, [])


def run_guards(event: WriteEvent) -> None:
    """Every guard of the event's type, in registration order (the first to object raises)."""
    for check in guards_for(event.resource_type):
        check(event)

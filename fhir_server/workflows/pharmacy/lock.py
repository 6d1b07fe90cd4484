"""The lock on finalized prescription items (R4 medicationrequest.html "status": a request that is
``active`` is acted upon; changes are made by a new request with ``priorPrescription``).

A ``@guard("MedicationRequest")`` that runs on every write path (REST, Bundles, HL7 bridge):

* the finalized tag (``meta.tag`` ``…/CodeSystem/workflow|finalized``) is set only by ``$finalize``
  (a write inside ``writing("finalize")``); any other write that adds it is refused;
* a finalized item is never edited nor deleted: a write may only change ``status`` (to stopped,
  cancelled, entered-in-error or completed) and ``statusReason``; inside ``writing("dispense")``
  (the dispense reconciliation) it may also move back from completed to active. ``meta`` other than
  the tag is not compared (server-owned versionId/lastUpdated; tags and labels stay free).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from fhir_server.errors import UnprocessableEntity
from fhir_server.services.hooks import WriteEvent, guard
from fhir_server.workflows.pharmacy.codes import CLOSING_STATUSES, FINALIZED, WORKFLOW_SYSTEM

__all__ = ["finalized_tag", "is_finalized", "writing"]

_MODE: ContextVar[str | None] = ContextVar("pharmacy_write_mode", default=None)
_FREE = frozenset({"meta", "status", "statusReason"})


@contextmanager
def writing(mode: str) -> Iterator[None]:
    """Writes made inside are the workflow's own (``finalize`` or ``dispense``)."""
    token = _MODE.set(mode)
    try:
        yield
    finally:
        _MODE.reset(token)


def finalized_tag() -> dict[str, str]:
    return {"system": WORKFLOW_SYSTEM, "code": FINALIZED, "display": "Finalized prescription item"}


def is_finalized(resource: dict[str, Any] | None) -> bool:
    tags = ((resource or {}).get("meta") or {}).get("tag") or []
    return any(isinstance(t, dict) and t.get("system") == WORKFLOW_SYSTEM and t.get("code") == FINALIZED for t in tags)


def _locked(resource: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in resource.items() if k not in _FREE and k != "id"}


@guard("MedicationRequest")
def keep_finalized_locked(event: WriteEvent) -> None:
    was, will = is_finalized(event.before), is_finalized(event.after)
    mode = _MODE.get()
    if not was:
        if will and mode != "finalize":
            raise UnprocessableEntity(
                "Only MedicationRequest/$finalize marks a prescription item finalized",
                expression="MedicationRequest.meta.tag",
            )
        return
    before = event.before or {}
    if event.after is None:
        raise UnprocessableEntity(
            f"MedicationRequest/{event.resource_id} is finalized and cannot be deleted; set its status to "
            "entered-in-error or cancelled instead",
            expression="MedicationRequest",
        )
    after = event.after
    if not will:
        raise UnprocessableEntity(
            f"MedicationRequest/{event.resource_id} is finalized: keep its meta.tag {WORKFLOW_SYSTEM}|{FINALIZED}",
            expression="MedicationRequest.meta.tag",
        )
    old, new = _locked(before), _locked(after)
    if old != new:
        changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        raise UnprocessableEntity(
            f"MedicationRequest/{event.resource_id} is finalized and cannot be edited ({', '.join(changed)}); "
            "stop or cancel it and write a new request with priorPrescription",
            expression=f"MedicationRequest.{changed[0]}",
        )
    old_status, new_status = before.get("status"), after.get("status")
    if old_status == new_status or new_status == "entered-in-error":
        return
    if new_status in CLOSING_STATUSES and old_status in ("active", "on-hold", "completed"):
        if new_status == "completed" and mode != "dispense" and old_status != "active":
            raise UnprocessableEntity(f"A {old_status} prescription item cannot become completed", expression="MedicationRequest.status")
        return
    if mode == "dispense" and (old_status, new_status) == ("completed", "active"):
        return  # a reversed dispense reopens the item
    raise UnprocessableEntity(
        f"MedicationRequest/{event.resource_id} is finalized: its status may change from {old_status} only to "
        + ", ".join(sorted(CLOSING_STATUSES)),
        expression="MedicationRequest.status",
    )

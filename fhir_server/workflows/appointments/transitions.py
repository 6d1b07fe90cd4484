"""The Appointment status machine (https://hl7.org/fhir/R4/appointment.html#statemachine, the
``AppointmentStatus`` value set), as data: ``NEXT[from]`` is every status an Appointment may move
to from ``from``. Keeping a status is always allowed (an edit of another element).

``check`` is the guard every write path runs (``rules.guard_appointment``): an illegal move is a
409 whose OperationOutcome names ``Appointment.status`` and lists the allowed next statuses.
"""

from __future__ import annotations

from datetime import datetime

from fhir_server.errors import Forbidden, Issue, UnprocessableEntity, VersionConflict

NEXT: dict[str, tuple[str, ...]] = {
    "proposed": ("pending", "booked", "waitlist", "cancelled", "entered-in-error"),
    "pending": ("booked", "waitlist", "cancelled", "entered-in-error"),
    "waitlist": ("pending", "booked", "cancelled", "entered-in-error"),
    "booked": ("arrived", "checked-in", "cancelled", "noshow", "entered-in-error"),
    "checked-in": ("arrived", "fulfilled", "entered-in-error"),
    "arrived": ("fulfilled", "entered-in-error"),
    "fulfilled": ("entered-in-error",),
    "cancelled": ("entered-in-error",),
    "noshow": ("entered-in-error",),
    "entered-in-error": (),
}

# roles that may mark an appointment entered-in-error (None: a command or development mode); the
# HL7 bridge's senders (role "integration"/"device": a scheduling system's SIU^S17 deletes its own
# appointments) are the source of those appointments
CORRECTORS = frozenset({"admin", "receptionist", "device", "integration"})


def allowed(from_status: str) -> tuple[str, ...]:
    return NEXT.get(from_status, ())


def check(from_status: str | None, to_status: str | None, *, role: str | None) -> None:
    """Raise unless ``from_status`` → ``to_status`` is allowed (None: a create or a delete)."""
    if from_status is None or to_status is None or from_status == to_status:
        return
    if to_status not in allowed(from_status):
        nexts = allowed(from_status)
        listed = ", ".join(nexts) if nexts else "none (a final status)"
        raise VersionConflict(
            f"Appointment.status cannot change from '{from_status}' to '{to_status}'; "
            f"allowed next statuses: {listed}",
            issues=[
                Issue("error", "conflict", f"Appointment.status cannot change from '{from_status}' to "
                      f"'{to_status}'; allowed next statuses: {listed}", "Appointment.status"),
                *(Issue("information", "informational", f"allowed next status: {s}", "Appointment.status") for s in nexts),
            ],
        )
    if to_status == "entered-in-error" and role is not None and role not in CORRECTORS:
        raise Forbidden(f"Only {' or '.join(sorted(CORRECTORS))} may mark an Appointment entered-in-error",
                        expression="Appointment.status")


def check_noshow(start: datetime | None, at: datetime, grace_minutes: float) -> None:
    """booked → noshow only once the start plus the grace period has passed."""
    if start is None:
        raise UnprocessableEntity("A no-show needs the appointment's start", expression="Appointment.start")
    if at.timestamp() < start.timestamp() + grace_minutes * 60:
        raise VersionConflict(
            f"Appointment.status cannot be 'noshow' before {grace_minutes:g} minutes after the start",
            expression="Appointment.status",
        )

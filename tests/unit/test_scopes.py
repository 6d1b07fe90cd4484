"""SMART scopes v1 and v2 (https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html)
and the role matrix they are intersected with (fhir_server/auth/permissions.py)."""

from __future__ import annotations

import pytest

from fhir_server.auth.permissions import Override, Permission, RolePolicy, defaults
from fhir_server.auth.scopes import letter_of, parse_scope, parse_scopes


@pytest.mark.parametrize(
    ("text", "context", "rtype", "letters"),
    [
        ("patient/Observation.read", "patient", "Observation", "rs"),  # v1
        ("user/*.write", "user", "*", "cud"),
        ("system/*.*", "system", "*", "cruds"),
        ("patient/Observation.rs", "patient", "Observation", "rs"),  # v2
        ("user/*.cruds", "user", "*", "cruds"),
        ("system/Patient.r", "system", "Patient", "r"),
        ("user/Encounter.cu", "user", "Encounter", "cu"),
        ("system/*.read", "system", "*", "rs"),
    ],
)
def test_resource_scopes_parse_to_letters(text: str, context: str, rtype: str, letters: str) -> None:
    scope = parse_scope(text)
    assert scope is not None
    assert (scope.context, scope.resource_type, scope.letters) == (context, rtype, frozenset(letters))


@pytest.mark.parametrize(
    "text",
    ["openid", "fhirUser", "launch/patient", "offline_access", "patient/Observation.sr",  # out of order
     "patient/Observation.rr", "patient/Observation.x", "patient/Observation.", "doctor/Patient.read",
     "patient/observation.read", "patient/Observation", "user/*.readwrite"],
)
def test_non_resource_or_malformed_scopes_grant_nothing(text: str) -> None:
    assert parse_scope(text) is None
    assert not parse_scopes(text).allows("r", "Observation")


def test_granular_v2_scope_is_kept_but_grants_nothing() -> None:
    scopes = parse_scopes("patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory")
    assert scopes.granular and scopes.granular[0].query.startswith("category=")
    assert not scopes.allows("r", "Observation")


def test_scope_set_unions_scopes_and_wildcards() -> None:
    scopes = parse_scopes("openid fhirUser launch/patient patient/Observation.rs user/Patient.read user/*.c")
    assert scopes.allows("r", "Observation") and scopes.allows("s", "Observation")
    assert not scopes.allows("u", "Observation")
    assert scopes.allows("c", "Condition")  # user/*.c
    assert scopes.allows("s", "Patient") and not scopes.allows("d", "Patient")
    assert scopes.only_patient_context("r", "Observation")
    assert not scopes.only_patient_context("r", "Patient")
    assert not scopes.allows("r", None)  # nothing readable on every type


@pytest.mark.parametrize(
    ("interaction", "letter"),
    [("read", "r"), ("vread", "r"), ("history-instance", "r"), ("search-type", "s"), ("search-system", "s"),
     ("history-type", "s"), ("history-system", "s"), ("create", "c"), ("update", "u"), ("patch", "u"), ("delete", "d")],
)
def test_interactions_need_the_smart_letter(interaction: str, letter: str) -> None:
    assert letter_of(interaction) == letter


def _perm(role: str, scope: str, overrides: list[Override] | None = None) -> Permission:
    d = defaults()
    policy = RolePolicy(role, d.roles.get(role, ()), overrides or [], d.explicit_operations)
    return Permission(role, policy, parse_scopes(scope), scope)


def test_effective_permission_is_role_intersected_with_scopes() -> None:
    nurse = _perm("nurse", "user/*.cruds")
    assert nurse.may("read", "Patient") and not nurse.may("delete", "Patient")
    assert "nurse may not delete Patient" in nurse.why_not("delete", "Patient")
    app = _perm("doctor", "patient/Observation.rs")
    assert app.may("read", "Observation") and app.may("search-type", "Observation")
    assert not app.may("create", "Observation")  # the doctor may, the scope may not
    assert "scopes" in app.why_not("create", "Observation")
    assert not app.may("read", "Condition")


def test_operations_granted_by_name_or_riding_on_read() -> None:
    doctor, nurse = _perm("doctor", "system/*.*"), _perm("nurse", "system/*.*")
    assert doctor.may_operation("finalize", "MedicationRequest", read_only=False)
    assert not nurse.may_operation("finalize", "MedicationRequest", read_only=False)
    assert nurse.may_operation("everything", "Patient", read_only=True)  # read-only: read on Patient suffices
    assert not _perm("billing-clerk", "system/*.*").may_operation("everything", "Observation", read_only=True)
    assert not doctor.may_operation("export", "Patient", read_only=True)  # explicit_operations
    assert not doctor.may_operation("reindex-status", None, read_only=True)  # system level: grant needed
    admin = _perm("admin", "system/*.*")
    assert admin.may_operation("reindex", None, read_only=False) and admin.may_operation("explain", None, read_only=True)
    assert not _perm("admin", "system/*.read").may_operation("reindex", None, read_only=False)  # needs u


def test_overrides_most_specific_first() -> None:
    ov = [
        Override("doctor", "*", "deny", frozenset({"update"}), ()),
        Override("doctor", "Observation", "grant", frozenset({"update", "delete"}), ("meta*",)),
        Override("doctor", "MedicationRequest", "deny", frozenset(), ("finalize",)),
    ]
    doctor = _perm("doctor", "system/*.*", ov)
    assert not doctor.may("update", "Condition")  # deny on * beats the default
    assert doctor.may("update", "Observation") and doctor.may("delete", "Observation")  # type grant beats * deny
    assert doctor.may_operation("meta-add", "Observation", read_only=False)
    assert not doctor.may_operation("finalize", "MedicationRequest", read_only=False)
    custom = _perm("triage", "system/*.*", [Override("triage", "Patient", "grant", frozenset({"read"}), ())])
    assert custom.may("read", "Patient") and not custom.may("read", "Observation")


def test_readable_types_follow_role_and_scope() -> None:
    assert _perm("auditor", "system/*.*").readable_types() == frozenset({"AuditEvent"})
    assert _perm("doctor", "user/Observation.rs user/Patient.r").readable_types() == frozenset({"Observation", "Patient"})
    receptionist = _perm("receptionist", "system/*.*").readable_types()
    assert receptionist is not None and "Observation" not in receptionist and "Appointment" in receptionist


def test_unknown_role_may_do_nothing() -> None:
    nobody = _perm("user", "system/*.*")
    assert not nobody.may("read", "Patient") and nobody.readable_types() == frozenset()

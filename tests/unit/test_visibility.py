"""fhir_server.auth.visibility without a database: the Access of a Principal, the SQL's shape
(binds only), and the write rules (facility labels, patient compartment)."""

from __future__ import annotations

from typing import Any

import pytest

from fhir_server.auth.tokens import Principal
from fhir_server.auth.visibility import (
    FACILITY_SYSTEM,
    UNRESTRICTED,
    Access,
    check_compartment,
    prepare_write,
    visible_binds,
)
from fhir_server.errors import Forbidden


def _label(*codes: str) -> list[dict[str, str]]:
    return [{"system": FACILITY_SYSTEM, "code": c} for c in codes]


def test_unrestricted_principal_adds_no_sql() -> None:
    access = Access.of(Principal("u", "t", "admin", "system/*.*"))
    assert access is UNRESTRICTED and access.unrestricted
    binds: dict[str, Any] = {}
    assert visible_binds(access, "r", binds) is None and binds == {}
    assert Access.of(None) is UNRESTRICTED


def test_restricted_sql_carries_values_as_binds_only() -> None:
    access = Access.of(Principal("u", "t", "nurse", "", patient="p'1", facilities=("ward-a'; drop",)))
    binds: dict[str, Any] = {"t": "x"}
    sql = visible_binds(access, "r", binds, resource_type="Observation")
    assert sql is not None and "ward-a" not in sql and "p'1" not in sql
    assert ["ward-a'; drop"] in binds.values() and "p'1" in binds.values()
    assert "FALSE" == visible_binds(Access(None, "p1"), "r", {}, resource_type="Organization")


def test_job_access_round_trips() -> None:
    access = Access(("a", "b"), "p1")
    assert Access.from_json(access.to_json()) == access
    assert Access.from_json(UNRESTRICTED.to_json()) is UNRESTRICTED


def test_create_by_bound_user_gets_its_facilities() -> None:
    resource: dict[str, Any] = {"resourceType": "Observation"}
    prepare_write(Access(("ward-a", "ward-c"), None), resource, None)
    assert resource["meta"]["security"] == _label("ward-a", "ward-c")


def test_labelling_another_facility_is_forbidden() -> None:
    with pytest.raises(Forbidden):
        prepare_write(Access(("ward-a",), None), {"meta": {"security": _label("ward-a", "ward-b")}}, None)


def test_update_keeps_previous_labels_or_stays_tenant_wide() -> None:
    access = Access(("ward-a", "ward-b"), None)
    resource: dict[str, Any] = {"meta": {"tag": [{"code": "x"}]}}
    prepare_write(access, resource, '{"meta": {"security": [{"system": "' + FACILITY_SYSTEM + '", "code": "ward-b"}]}}')
    assert resource["meta"]["security"] == _label("ward-b") and resource["meta"]["tag"] == [{"code": "x"}]
    tenant_wide: dict[str, Any] = {}
    prepare_write(access, tenant_wide, "{}")
    assert "meta" not in tenant_wide


def test_unbound_user_writes_are_untouched() -> None:
    resource: dict[str, Any] = {"meta": {"security": _label("anything")}}
    prepare_write(UNRESTRICTED, resource, None)
    assert resource == {"meta": {"security": _label("anything")}}


def test_patient_context_writes_only_in_its_compartment() -> None:
    access = Access(None, "p1")
    check_compartment(access, "Observation", "o1", [("subject", "Patient", "p1", None, None)])
    check_compartment(access, "Patient", "p1", [])
    with pytest.raises(Forbidden):
        check_compartment(access, "Observation", "o1", [("subject", "Patient", "p2", None, None)])
    with pytest.raises(Forbidden):
        check_compartment(access, "Observation", "o1", [("focus", "Patient", "p1", None, None)])  # not a compartment link
    with pytest.raises(Forbidden):
        check_compartment(access, "Patient", "p2", [])

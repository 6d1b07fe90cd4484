"""Validation on every write against R4 4.0.1 (validation.html): bad input is 400 and writes nothing."""

from __future__ import annotations

import httpx
import psycopg
import pytest

from tests.integration.test_crud import new_patient
from tests.integration.test_errors import assert_outcome, count_rows

OBS = {"resourceType": "Observation", "status": "final", "code": {"text": "Haemoglobin"}}

CASES = [
    pytest.param(new_patient(birthDate="2023-02-30"), "Patient.birthDate", id="impossible-date"),
    pytest.param(new_patient(favouriteColour="blue"), "Patient.favouriteColour", id="unknown-element"),
    pytest.param(new_patient(gender="robot"), "Patient.gender", id="wrong-gender-code"),
    pytest.param({k: v for k, v in OBS.items() if k != "status"}, "Observation.status", id="observation-without-status"),
    pytest.param({**OBS, "subject": {"reference": "Patient/"}}, "Observation.subject.reference", id="malformed-reference"),
]


@pytest.mark.parametrize(("resource", "location"), CASES)
def test_invalid_resource_is_rejected_with_location(
    client: httpx.Client, db: psycopg.Connection, resource: dict, location: str
) -> None:
    """validation.html: each problem is an issue whose expression names the element."""
    before = count_rows(db)
    body = assert_outcome(client.post(f"/{resource['resourceType']}", json=resource), 400)
    expressions = [e for issue in body["issue"] for e in issue.get("expression", [])]
    assert location in expressions, body
    assert count_rows(db) == before


def test_invalid_update_writes_nothing(client: httpx.Client) -> None:
    """http.html#update and validation.html: an invalid update is 400 and the version stays."""
    created = client.post("/Patient", json=new_patient()).json()
    r = client.put(f"/Patient/{created['id']}", json={**created, "birthDate": "1999-13-01"})
    assert_outcome(r, 400)
    assert client.get(f"/Patient/{created['id']}").json()["meta"]["versionId"] == "1"

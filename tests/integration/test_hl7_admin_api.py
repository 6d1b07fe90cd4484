"""The HL7 v2 message log over the admin API (issue 6 "Visibility": raw message, sender, type, control id,
status, ACK, resulting resources, errors, searchable), over real HTTP against messages sent over real MLLP:
filters, keyset paging, tenant scoping, the detail with the raw message, replay after fixing the sender,
authentication and the admin role, and the audit row a body read leaves."""

from __future__ import annotations

import asyncio
import sys
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import ServerProcess, issue_token, server_env
from tests.integration.test_hl7_support import MLLPClient, ack_code, listener_fixture, msg, new_sender

listener = listener_fixture()


def siu(app: str, control: str, *, mrn: str = "MRN-A1", filler: str = "F-A1") -> bytes:
    return msg(
        f"MSH|^~\\&|{app}|LAB|EHR|HOSP|20240301083500||SIU^S12^SIU_S12|{control}|P|2.5.1",
        f"SCH||{filler}^SCHED|||||ROUTINE^Routine^HL70276|||||^^^20240310093000^20240310100000||||||||||||||Booked",
        f"PID|1||{mrn}^^^HOSP^MR||Rao^Kiran||19800101|M",
    )


def adt(app: str, control: str, *, mrn: str = "MRN-A9") -> bytes:
    return msg(
        f"MSH|^~\\&|{app}|LAB|EHR|HOSP|20240301083500||ADT^A04^ADT_A01|{control}|P|2.5.1",
        "EVN|A04|20240301083500",
        f"PID|1||{mrn}^^^HOSP^MR||Iyer^Meera||19750102|F",
    )


@pytest.fixture(scope="module")
def log(listener: Any, database_url: str) -> dict[str, Any]:
    """Two tenants' senders and an unknown sender (their messages are sent by ``_send_all``, in the loop
    the listener runs in)."""
    app_a, _, tenant_a = new_sender(database_url, unknown_patient="refuse")
    app_b, _, tenant_b = new_sender(database_url)
    stranger = f"X{uuid.uuid4().hex[:8].upper()}"
    return {"app_a": app_a, "tenant_a": tenant_a, "app_b": app_b, "tenant_b": tenant_b, "stranger": stranger}


async def _send_all(port: int, data: dict[str, Any]) -> None:
    if data.get("sent"):
        return
    async with MLLPClient(port) as c:
        data["acks"] = {
            "A0": await c.send(siu(data["app_a"], "A0")),
            "A1": await c.send(adt(data["app_a"], "A1")),
            "A2": await c.send(siu(data["app_a"], "A2", mrn="MRN-A2", filler="F-A2")),
            "B1": await c.send(siu(data["app_b"], "B1")),
            "X1": await c.send(siu(data["stranger"], "X1")),
        }
    data["sent"] = True


@pytest.fixture(scope="module")
def admin(database_url: str, server: ServerProcess) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_token(database_url, tenant='default', role='admin')}"}


@pytest.fixture
async def http() -> Any:
    """An async HTTP client: the MLLP listener runs in the test's event loop, which must not block."""
    async with httpx.AsyncClient(timeout=60) as client:
        yield client


def origin(server: ServerProcess) -> str:
    return server.base.removesuffix("/fhir")


async def test_filters_and_newest_first(http: httpx.AsyncClient, listener: Any, log: dict[str, Any], server: ServerProcess,
                                        admin: dict[str, str]) -> None:
    """Issue 6 "Visibility": the message log is searchable by status, type, control id, sender and time; newest first."""
    await _send_all(listener.port, log)
    acks = log["acks"]
    assert [ack_code(acks[k]) for k in ("A0", "A1", "A2", "B1", "X1")] == ["AE", "AE", "AE", "AA", "AR"]
    url = f"{origin(server)}/admin/hl7/messages"
    r = await http.get(url, params={"sender": f"{log['app_a']}@LAB"}, headers=admin)
    assert r.status_code == 200, r.text
    rows = r.json()["messages"]
    assert [m["controlId"] for m in rows] == ["A2", "A1", "A0"]
    assert rows[0]["sender"] == {"app": log["app_a"], "facility": "LAB"} and rows[0]["tenant"] == log["tenant_a"]
    assert rows[0]["status"] == "error" and rows[0]["ackCode"] == "AE"
    assert rows[0]["error"]["code"] == "204" and rows[0]["error"]["location"].startswith("PID")
    assert "raw" not in rows[0] and "ack" not in rows[0]
    assert r.json()["next"] is None

    async def by(**p: str) -> list[str]:
        r = await http.get(url, params={"sender": log["app_a"], **p}, headers=admin)
        return [m["controlId"] for m in r.json()["messages"]]

    assert await by(type="ADT") == ["A1"]
    assert await by(type="SIU^S12") == ["A2", "A0"]
    assert await by(**{"control-id": "A0"}) == ["A0"]
    assert await by(status="processed") == []
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert await by(since=future) == [] and await by(until=future) == ["A2", "A1", "A0"]
    r = await http.get(url, params={"status": "bogus"}, headers=admin)
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["status"]
    assert (await http.get(url, params={"since": "yesterday"}, headers=admin)).status_code == 400
    # the server-wide admin also sees unknown senders' messages
    [x1] = (await http.get(url, params={"sender": log["stranger"]}, headers=admin)).json()["messages"]
    assert x1["status"] == "error" and x1["ackCode"] == "AR" and x1["tenant"] is None


async def test_keyset_paging(http: httpx.AsyncClient, listener: Any, log: dict[str, Any], server: ServerProcess, admin: dict[str, str]) -> None:
    """Issue 6 "Visibility"; paging by keyset (README design: no OFFSET): ``_count`` and a ``next`` URL."""
    await _send_all(listener.port, log)
    r = await http.get(f"{origin(server)}/admin/hl7/messages", params={"sender": log["app_a"], "_count": "2"}, headers=admin)
    page = r.json()
    assert [m["controlId"] for m in page["messages"]] == ["A2", "A1"]
    assert page["next"].startswith("/admin/hl7/messages?")
    page2 = (await http.get(origin(server) + page["next"], headers=admin)).json()
    assert [m["controlId"] for m in page2["messages"]] == ["A0"] and page2["next"] is None


async def test_tenant_admin_sees_only_its_senders(http: httpx.AsyncClient, listener: Any, log: dict[str, Any], server: ServerProcess,
                                                  database_url: str, admin: dict[str, str]) -> None:
    """README "Tenants": a tenant's admin, on its own base ``/fhir/{tenant}``, sees only the messages of the
    senders mapped to its tenant; another tenant's message is 404; its token is refused on the global path."""
    await _send_all(listener.port, log)
    t = log["tenant_a"]
    tenant_admin = {"Authorization": f"Bearer {issue_token(database_url, tenant=t, role='admin')}"}
    r = await http.get(f"{server.base}/{t}/admin/hl7/messages", headers=tenant_admin)
    assert r.status_code == 200, r.text
    assert [m["controlId"] for m in r.json()["messages"]] == ["A2", "A1", "A0"]
    r = await http.get(f"{server.base}/{t}/admin/hl7/messages", params={"_count": "1"}, headers=tenant_admin)
    assert r.json()["next"].startswith(f"/fhir/{t}/admin/hl7/messages?")
    everything = (await http.get(f"{origin(server)}/admin/hl7/messages", params={"_count": "1000"}, headers=admin)).json()
    b1 = next(m for m in everything["messages"] if m["sender"]["app"] == log["app_b"])
    assert (await http.get(f"{server.base}/{t}/admin/hl7/messages/{b1['id']}", headers=tenant_admin)).status_code == 404
    assert (await http.post(f"{server.base}/{t}/admin/hl7/messages/{b1['id']}/replay", headers=tenant_admin)).status_code == 404
    assert (await http.get(f"{origin(server)}/admin/hl7/messages", headers=tenant_admin)).status_code == 403


async def test_auth_required_and_admin_role_only(http: httpx.AsyncClient, server: ServerProcess, database_url: str) -> None:
    """SMART App Launch / README "Roles": no token → 401; a role other than admin → 403; both OperationOutcomes
    (http.html, operationoutcome.html)."""
    url = f"{origin(server)}/admin/hl7/messages"
    r = await http.get(url)
    assert r.status_code == 401 and r.json()["resourceType"] == "OperationOutcome"
    nurse = {"Authorization": f"Bearer {issue_token(database_url, tenant='default', role='nurse')}"}
    r = await http.get(url, headers=nurse)
    assert r.status_code == 403 and r.json()["issue"][0]["code"] == "forbidden"
    assert (await http.get(f"{url}/1", headers=nurse)).status_code == 403
    assert (await http.post(f"{url}/1/replay", headers=nurse)).status_code == 403


async def test_detail_has_raw_and_ack_and_is_audited(http: httpx.AsyncClient, listener: Any, log: dict[str, Any], server: ServerProcess,
                                                     database_url: str, admin: dict[str, str]) -> None:
    """Issue 6 "Visibility" (raw message, ACK, resources); IHE BALP: reading patient data leaves an audit row."""
    await _send_all(listener.port, log)
    [b1] = (await http.get(f"{origin(server)}/admin/hl7/messages", params={"sender": log["app_b"]}, headers=admin)).json()["messages"]
    r = await http.get(f"{origin(server)}/admin/hl7/messages/{b1['id']}", headers=admin)
    assert r.status_code == 200, r.text
    detail = r.json()
    assert detail["raw"] == siu(log["app_b"], "B1").decode()
    assert detail["ack"] == log["acks"]["B1"]
    assert detail["status"] == "processed" and detail["ackCode"] == "AA"
    kinds = sorted(ref.split("/")[0] for ref in detail["resources"])
    assert kinds == ["Appointment", "Patient"]
    patient_id = next(ref.split("/")[1] for ref in detail["resources"] if ref.startswith("Patient/"))
    for missing in ("999999999", "not-a-number"):  # http.html#read: 404 with an OperationOutcome
        r = await http.get(f"{origin(server)}/admin/hl7/messages/{missing}", headers=admin)
        assert r.status_code == 404 and r.json()["resourceType"] == "OperationOutcome"
    rows: list[Any] = []
    for _ in range(50):  # the audit sink writes in batches every 0.2 s
        with psycopg.connect(database_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT tenant_id, action, interaction, agent, role, patient, status FROM audit_event "
                "WHERE path = %s AND interaction = 'hl7-message-read'", (f"/admin/hl7/messages/{b1['id']}",)).fetchall()
        if rows:
            break
        await asyncio.sleep(0.1)
    assert len(rows) == 1
    tenant, action, _, _, role, patient, status = rows[0]
    assert (tenant, action, role, patient, status) == (log["tenant_b"], "R", "admin", patient_id, 200)


async def test_replay_after_fixing_the_sender(http: httpx.AsyncClient, listener: Any, log: dict[str, Any], server: ServerProcess,
                                              database_url: str, admin: dict[str, str]) -> None:
    """HL7 v2.5.1 Ch. 2 §2.9 (original acknowledgment of the reprocessed message); issue 6 "keep the message for
    review and replay": an AE kept with status error is processed again once the sender may create patients."""
    await _send_all(listener.port, log)
    r = await http.get(f"{origin(server)}/admin/hl7/messages", params={"sender": log["app_a"], "control-id": "A0"},
                       headers=admin)
    [a0] = r.json()["messages"]
    url = f"{origin(server)}/admin/hl7/messages/{a0['id']}/replay"
    r = await http.post(url, headers=admin)  # still refused: the sender's policy has not changed
    assert r.status_code == 200, r.text
    assert r.json()["ackCode"] == "AE" and r.json()["status"] == "error" and r.json()["attempts"] == 2
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("UPDATE hl7_sender SET options = options || '{\"unknown_patient\": \"create\"}'::jsonb "
                     "WHERE sending_app = %s", (log["app_a"],))
    r = await http.post(url, headers=admin)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ackCode"] == "AA" and body["status"] == "processed" and body["ack"].split("\r")[1].startswith("MSA|AA|A0")
    assert sorted(ref.split("/")[0] for ref in body["resources"]) == ["Appointment", "Patient"]
    assert "error" not in body
    r = await http.post(url, headers=admin)  # processed: not replayed again
    assert r.status_code == 409 and r.json()["resourceType"] == "OperationOutcome"
    with psycopg.connect(database_url, autocommit=True) as conn:
        [(n,)] = conn.execute("SELECT count(*) FROM resource WHERE tenant_id = %s AND resource_type = 'Appointment'",
                              (log["tenant_a"],)).fetchall()
    assert n == 1


async def test_cli_filters(listener: Any, log: dict[str, Any], database_url: str) -> None:
    """``fhir-server hl7 messages --type --sender --since`` (README "HL7 v2 bridge"): the same filters as the API."""
    await _send_all(listener.port, log)
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fhir_server.cli", "hl7", "messages", "--sender", f"{log['app_b']}@LAB", "--type", "SIU",
        "--since", since, env=server_env(DATABASE_URL=database_url), stdout=asyncio.subprocess.PIPE)
    stdout, _ = await proc.communicate()
    assert proc.returncode == 0
    lines = [ln for ln in stdout.decode().splitlines() if ln.startswith("{")]
    assert len(lines) == 1 and '"control_id": "B1"' in lines[0]

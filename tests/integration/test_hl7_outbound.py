"""HL7 v2 outbound orders (issue 6 "Outbound"; hl7_bridge/README.md "Outbound"): a ServiceRequest that
becomes active (or is revoked) over real HTTP puts an ORM^O01 / OML^O21 (HL7 v2.5.1 Ch. 4 §4.4.1,
§4.4.6) in the durable outbox in the write's own transaction; the dispatcher (``serve --hl7-outbox``)
sends it over real MLLP (v2 Appendix C) to a test MLLP server in this process, which refuses the first
attempt; retries with backoff, per-destination order, ACK recorded, dead rows and ``outbox retry``.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Self

import httpx
import psycopg
import pytest

from hl7_bridge.ack import build_ack
from hl7_bridge.decode import Message, parse
from hl7_bridge.mllp import Framer, frame
from tests.conftest import ServerProcess, free_port, issue_token, server_env

LOINC = "http://loinc.org"
SCT = "http://snomed.info/sct"
LAB = [{"coding": [{"system": SCT, "code": "108252007", "display": "Laboratory procedure"}]}]
IMAGING = [{"coding": [{"system": SCT, "code": "363679005", "display": "Imaging"}]}]
PLAC = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "PLAC"}]}


class OrderReceiver:
    """A device endpoint: a real asyncio MLLP server on 127.0.0.1 answering each message with the
    ACK code ``script(n, message)`` gives (n = 0-based count of messages received so far)."""

    def __init__(self, script: Callable[[int, Message], str], port: int = 0) -> None:
        self.script = script
        self.received: list[tuple[float, Message]] = []
        self.server: asyncio.Server | None = None
        self.port = port

    async def __aenter__(self) -> Self:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer = Framer(1024 * 1024)
        try:
            while data := await reader.read(65536):
                for fr in framer.feed(data):
                    message = parse(fr.data.decode())
                    code = self.script(len(self.received), message)
                    self.received.append((time.monotonic(), message))
                    writer.write(frame(build_ack(code, message, text="refused by test" if code != "AA" else "").encode()))
                    await writer.drain()
        finally:
            writer.close()

    def orc1(self) -> list[str]:
        return [m.first("ORC").get(1) for _, m in self.received]  # type: ignore[union-attr]


async def until(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.1)
    raise AssertionError("timed out waiting")


async def cli(database_url: str, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fhir_server.cli", *args, env=server_env(DATABASE_URL=database_url),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


def outbox_rows(database_url: str, tenant: str) -> list[dict[str, Any]]:
    cols = ["id", "sequence", "resource_id", "resource_version", "event", "control_id", "status", "attempts",
            "last_error", "ack_code", "ack_text", "message", "message_type", "first_attempt_at", "sent_at"]
    with psycopg.connect(database_url, autocommit=True) as conn:
        rows = conn.execute(f"SELECT {', '.join(cols)} FROM hl7_outbox WHERE tenant_id = %s ORDER BY sequence",
                            (tenant,)).fetchall()
    return [dict(zip(cols, r, strict=True)) for r in rows]


@pytest.fixture(scope="module")
def outbound_server(database_url: str) -> Iterator[ServerProcess]:
    srv = ServerProcess(server_env(DATABASE_URL=database_url), ["--workers", "1", "--hl7-outbox"])
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
async def tenant(outbound_server: ServerProcess, database_url: str) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    tid = f"ob{uuid.uuid4().hex[:10]}"
    code, _, err = await cli(database_url, "tenant", "create", tid, "--name", tid)
    assert code == 0, err
    token = issue_token(database_url, tenant=tid, role="admin")
    async with httpx.AsyncClient(base_url=f"{outbound_server.base}/{tid}", timeout=30, headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}) as c:
        yield tid, c


async def add_destination(database_url: str, tenant: str, port: int, *extra: str, name: str = "lis",
                          retry: str = '{"base_delay": 0.5, "max_delay": 2, "ack_timeout": 10}') -> None:
    code, out, err = await cli(database_url, "hl7", "destination", "add", "--tenant", tenant, "--name", name,
                               "--host", "127.0.0.1", "--port", str(port), "--receiving-app", "LIS",
                               "--receiving-facility", "MAINLAB", "--retry", retry, *extra)
    assert code == 0, err + out


async def seed_patient(c: httpx.AsyncClient) -> str:
    r = await c.post("/Patient", json={
        "resourceType": "Patient", "identifier": [{"system": "urn:hl7-v2:aa:HOSP", "value": "MRN-77",
                                                   "type": {"coding": [{"code": "MR"}]}}],
        "name": [{"family": "Iyer", "given": ["Meera"]}], "birthDate": "1975-01-02", "gender": "female"})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def order(patient: str, placer: str, *, status: str = "active", category: list[dict[str, Any]] = LAB,
          code: str = "2345-7", **more: Any) -> dict[str, Any]:
    return {"resourceType": "ServiceRequest", "status": status, "intent": "order", "category": category,
            "identifier": [{"type": PLAC, "system": "urn:hl7-v2:aa:EHR", "value": placer}],
            "code": {"coding": [{"system": LOINC, "code": code, "display": "Glucose"}]},
            "subject": {"reference": f"Patient/{patient}"}, "priority": "stat",
            "authoredOn": "2024-03-05T10:00:00+05:30", "note": [{"text": "fasting | since 8h"}], **more}


async def test_active_lab_order_is_sent_and_retried_after_a_refusal(tenant: Any, database_url: str) -> None:
    """HL7 v2.5.1 §4.4.1 ORM^O01 with ORC-1 NW, ORC-2 placer order number, OBR-4 universal service id, PID-3;
    §2.9 original-mode ACK: the first attempt answered AR is retried after a backoff, the second AA is recorded;
    then revoked → ORC-1 CA (table 0119) sent after it."""
    tid, c = tenant
    async with OrderReceiver(lambda n, _m: "AR" if n == 0 else "AA") as lis:
        await add_destination(database_url, tid, lis.port)
        patient = await seed_patient(c)
        r = await c.post("/ServiceRequest", json=order(patient, "PL-1001"))
        assert r.status_code == 201, r.text
        sr = r.json()
        await until(lambda: [x for x in outbox_rows(database_url, tid) if x["status"] == "sent"])
        assert len(lis.received) == 2
        (t1, first), (t2, second) = lis.received
        assert t2 - t1 >= 0.4  # base_delay 0.5 s, jitter ±20 %
        assert first.text == second.text  # the same message, same MSH-10
        m = second
        assert m.msh.raw(9) == "ORM^O01^ORM_O01" and m.version == "2.5.1"
        assert (m.msh.get(5), m.msh.get(6)) == ("LIS", "MAINLAB")
        assert m.first("PID").get(3) == "MRN-77" and m.first("PID").get(3, 4) == "HOSP" and m.first("PID").get(8) == "F"
        assert m.first("PID").get(5) == "Iyer" and m.first("PID").get(7) == "19750102"
        orc, obr = m.first("ORC"), m.first("OBR")
        assert orc.get(1) == "NW" and orc.get(2) == "PL-1001" and obr.get(2) == "PL-1001"
        assert (obr.get(4, 1), obr.get(4, 3)) == ("2345-7", "LN")
        assert m.first("TQ1").get(9) == "S"
        assert m.first("NTE").get(3) == "fasting | since 8h"  # sent escaped as \F\
        assert "\\F\\" in m.first("NTE").raw(3)
        [row] = outbox_rows(database_url, tid)
        assert row["status"] == "sent" and row["attempts"] == 2 and row["ack_code"] == "AA"
        assert row["last_error"].startswith("AR") and row["control_id"] == m.control_id
        assert (row["resource_id"], row["resource_version"], row["event"]) == (sr["id"], 1, "new")

        # an edit that keeps the status sends nothing; revoking sends CA
        sr["note"] = [{"text": "changed"}]
        assert (await c.put(f"/ServiceRequest/{sr['id']}", json=sr)).status_code == 200
        sr["status"] = "revoked"
        r = await c.put(f"/ServiceRequest/{sr['id']}", json=sr)
        assert r.status_code == 200, r.text
        await until(lambda: len(lis.received) == 3 and outbox_rows(database_url, tid)[-1]["status"] == "sent")
        cancel = lis.received[2][1]
        assert cancel.first("ORC").get(1) == "CA" and cancel.first("ORC").get(2) == "PL-1001"
        rows = outbox_rows(database_url, tid)
        assert [(x["event"], x["resource_version"], x["sequence"]) for x in rows] == [("new", 1, 1), ("cancel", 3, 2)]
        code, out, _ = await cli(database_url, "hl7", "outbox", "list", "--tenant", tid, "--status", "sent")
        assert code == 0 and out.count('"status": "sent"') == 2


async def test_order_per_destination_is_kept_across_retries(tenant: Any, database_url: str) -> None:
    """Durable outbox: messages of one destination leave in the order their writes committed, and message
    n+1 is not sent before message n was acknowledged (here n = 1 is refused twice first)."""
    tid, c = tenant
    async with OrderReceiver(lambda n, _m: "AE" if n < 2 else "AA") as lis:
        await add_destination(database_url, tid, lis.port)
        patient = await seed_patient(c)
        for i in range(4):
            r = await c.post("/ServiceRequest", json=order(patient, f"ORD-{i}"))
            assert r.status_code == 201, r.text
        await until(lambda: len([x for x in outbox_rows(database_url, tid) if x["status"] == "sent"]) == 4)
    placers = [m.first("ORC").get(2) for _, m in lis.received]  # type: ignore[union-attr]
    assert placers == ["ORD-0", "ORD-0", "ORD-0", "ORD-1", "ORD-2", "ORD-3"]
    rows = outbox_rows(database_url, tid)
    assert [x["sequence"] for x in rows] == [1, 2, 3, 4]
    assert [x["attempts"] for x in rows] == [3, 1, 1, 1]
    assert all(rows[i]["sent_at"] <= rows[i + 1]["first_attempt_at"] for i in range(3))


async def test_no_destination_or_no_match_queues_nothing(tenant: Any, database_url: str) -> None:
    """Destinations are per tenant and filter by category: a tenant without one, and an imaging destination
    for a lab order, queue nothing (and the write succeeds as usual)."""
    tid, c = tenant
    patient = await seed_patient(c)
    r = await c.post("/ServiceRequest", json=order(patient, "NOPE-1"))
    assert r.status_code == 201
    assert outbox_rows(database_url, tid) == []
    await add_destination(database_url, tid, 9, "--category", "imaging", name="pacs")
    await asyncio.sleep(5.2)  # the per-process destination cache (5 s)
    r = await c.post("/ServiceRequest", json=order(patient, "NOPE-2"))
    assert r.status_code == 201
    r = await c.post("/ServiceRequest", json=order(patient, "NOPE-3", status="draft", category=IMAGING))
    assert r.status_code == 201
    assert outbox_rows(database_url, tid) == []


async def test_a_rolled_back_write_queues_nothing(tenant: Any, database_url: str) -> None:
    """bundle.html#transaction: an active lab order in a transaction that fails is not sent (enqueue is in
    the write's own transaction)."""
    tid, c = tenant
    async with OrderReceiver(lambda n, _m: "AA") as lis:
        await add_destination(database_url, tid, lis.port)
        patient = await seed_patient(c)
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": order(patient, "TX-1"),
             "request": {"method": "POST", "url": "ServiceRequest"}},
            {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": {"resourceType": "Observation", "status": "bogus",
                                                                  "code": {"text": "x"}},
             "request": {"method": "POST", "url": "Observation"}},
        ]}
        r = await c.post("", json=bundle)
        assert 400 <= r.status_code < 500, r.text
        await asyncio.sleep(1.5)
        assert outbox_rows(database_url, tid) == [] and lis.received == []
        bundle["entry"] = bundle["entry"][:1]
        r = await c.post("", json=bundle)
        assert r.status_code == 200, r.text
        await until(lambda: len(lis.received) == 1)
        assert lis.received[0][1].first("ORC").get(2) == "TX-1"


async def test_dead_after_max_attempts_then_outbox_retry(tenant: Any, database_url: str) -> None:
    """Failures are visible: after max_attempts refusals the row is dead with the last error and ACK;
    ``fhir-server hl7 outbox retry --id N`` queues it again and it is sent."""
    tid, c = tenant
    accept = {"on": False}
    async with OrderReceiver(lambda n, _m: "AA" if accept["on"] else "AE") as lis:
        await add_destination(database_url, tid, lis.port,
                              retry='{"base_delay": 0.2, "max_delay": 0.5, "max_attempts": 3, "ack_timeout": 10}')
        patient = await seed_patient(c)
        assert (await c.post("/ServiceRequest", json=order(patient, "DEAD-1"))).status_code == 201
        [row] = await until(lambda: [x for x in outbox_rows(database_url, tid) if x["status"] == "dead"])
        assert row["attempts"] == 3 and row["ack_code"] == "AE" and row["ack_text"] == "refused by test"
        assert "AE" in row["last_error"] and len(lis.received) == 3
        code, out, _ = await cli(database_url, "hl7", "outbox", "list", "--tenant", tid, "--status", "dead")
        assert code == 0 and f'"id": {row["id"]}' in out
        accept["on"] = True
        code, out, err = await cli(database_url, "hl7", "outbox", "retry", "--id", str(row["id"]))
        assert code == 0, err
        await until(lambda: outbox_rows(database_url, tid)[0]["status"] == "sent")
        assert outbox_rows(database_url, tid)[0]["ack_code"] == "AA" and len(lis.received) == 4
        code, _, _ = await cli(database_url, "hl7", "outbox", "retry", "--id", str(row["id"]))
        assert code == 1  # only dead/failed rows


async def test_oml_o21_destination_with_specimen(tenant: Any, database_url: str) -> None:
    """HL7 v2.5.1 §4.4.6 OML^O21 laboratory order: MSH-9 OML^O21^OML_O21, ORC/OBR, and SPM from
    ServiceRequest.specimen; a connection refused at first is retried."""
    tid, c = tenant
    port = free_port()  # nothing listens there yet: the first attempt is refused at connect
    await add_destination(database_url, tid, port, "--message-type", "OML^O21", "--version", "2.5.1")
    patient = await seed_patient(c)
    r = await c.post("/Specimen", json={"resourceType": "Specimen", "identifier": [{"value": "SPEC-9"}],
                                        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0487",
                                                             "code": "BLD", "display": "Whole blood"}]},
                                        "subject": {"reference": f"Patient/{patient}"},
                                        "collection": {"collectedDateTime": "2024-03-05T09:30:00Z"}})
    assert r.status_code == 201, r.text
    spec = r.json()["id"]
    r = await c.post("/ServiceRequest", json=order(patient, "OML-1", specimen=[{"reference": f"Specimen/{spec}"}]))
    assert r.status_code == 201, r.text
    [row] = await until(lambda: [x for x in outbox_rows(database_url, tid) if x["status"] == "failed"])
    assert "connect" in row["last_error"] and row["ack_code"] is None
    async with OrderReceiver(lambda n, _m: "AA", port) as lis:
        await until(lambda: outbox_rows(database_url, tid)[0]["status"] == "sent")
    m = lis.received[0][1]
    assert m.msh.raw(9) == "OML^O21^OML_O21"
    assert [s.name for s in m] == ["MSH", "PID", "ORC", "TQ1", "OBR", "NTE", "SPM"]
    spm = m.first("SPM")
    assert spm.get(2) == "SPEC-9" and spm.get(4) == "BLD" and spm.get(17) == "20240305093000+0000"
    assert m.first("ORC").get(1) == "NW"


async def test_a_stale_sending_row_is_taken_over_and_blocks_its_successors(tenant: Any, database_url: str) -> None:
    """Durability: a row left ``sending`` by a dispatcher that died is sent again once its lease ran out
    (same MSH-10: at-least-once), and while a live lease holds a destination's head nothing behind it goes."""
    tid, c = tenant
    async with OrderReceiver(lambda n, _m: "AA") as lis:
        await add_destination(database_url, tid, lis.port)
        patient = await seed_patient(c)
        assert (await c.post("/ServiceRequest", json=order(patient, "LEASE-1"))).status_code == 201
        await until(lambda: outbox_rows(database_url, tid)[0]["status"] == "sent")
        first = outbox_rows(database_url, tid)[0]
        with psycopg.connect(database_url, autocommit=True) as conn:  # as if a dispatcher took it and died
            conn.execute("UPDATE hl7_outbox SET status = 'sending', sent_at = NULL, lease_owner = 'gone:1:x', "
                         "lease_until = clock_timestamp() + interval '3 seconds' WHERE id = %s", (first["id"],))
        assert (await c.post("/ServiceRequest", json=order(patient, "LEASE-2"))).status_code == 201
        await asyncio.sleep(1.5)
        assert len(lis.received) == 1  # LEASE-2 waits behind the leased head
        await until(lambda: [x["status"] for x in outbox_rows(database_url, tid)] == ["sent", "sent"], timeout=20)
    assert [m.first("ORC").get(2) for _, m in lis.received] == ["LEASE-1", "LEASE-1", "LEASE-2"]  # type: ignore[union-attr]
    assert lis.received[0][1].control_id == lis.received[1][1].control_id == first["control_id"]
    assert outbox_rows(database_url, tid)[0]["attempts"] == 2


def test_status_transitions_to_order_control() -> None:
    """HL7 v2.5.1 §4.5.1 ORC-1 (table 0119) from ServiceRequest.status changes (request-status)."""
    from hl7_bridge.outbound.hook import transition

    assert transition(None, "active", False, None) == "new"
    assert transition("draft", "active", False, None) == "new"
    assert transition("active", "on-hold", False, "new") == "hold"
    assert transition("on-hold", "active", False, "hold") == "release"
    assert transition("active", "revoked", False, "new") == "cancel"
    assert transition("active", "entered-in-error", False, "release") == "cancel"
    assert transition("active", None, True, "new") == "cancel"  # deleted
    assert transition("draft", "revoked", False, None) is None  # never sent: nothing to cancel
    assert transition(None, "on-hold", False, None) is None
    assert transition("active", "completed", False, "new") is None
    assert transition("revoked", "active", False, "cancel") is None  # not from revoked (request-status)


def test_destination_filter_and_no_echo() -> None:
    """Destinations take ServiceRequests by category (SNOMED CT, HL7 table 0074), code and performer; orders
    written by the HL7 inbound bridge are not sent unless forwarded, and never back to their sender."""
    from hl7_bridge.outbound.destinations import Destination

    lab = Destination(1, "t", "lis", "127.0.0.1", 2575, receiving_app="LIS", receiving_facility="LAB")
    sr = {"category": LAB, "code": {"coding": [{"system": LOINC, "code": "2345-7"}]},
          "performer": [{"reference": "Organization/lab-1"}]}
    ct = {"category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "CT"}]}]}
    assert lab.takes(sr, "client-1") and not lab.takes(ct, None)
    assert Destination(2, "t", "pacs", "h", 1, categories=("imaging",)).takes(ct, None)
    assert Destination(3, "t", "x", "h", 1, codes=(f"{LOINC}|2345-7",)).takes(sr, None)
    assert not Destination(4, "t", "x", "h", 1, codes=("718-7",)).takes(sr, None)
    assert not Destination(5, "t", "x", "h", 1, performers=("Organization/other",)).takes(sr, None)
    assert not lab.takes(sr, "hl7:HIS@WARD")
    fwd = Destination(6, "t", "lis", "h", 1, receiving_app="LIS", receiving_facility="LAB", forward_hl7=True)
    assert fwd.takes(sr, "hl7:HIS@WARD") and not fwd.takes(sr, "hl7:LIS@LAB")


def test_v23_encoding_puts_timing_in_tq_and_escapes() -> None:
    """v2.3/v2.4 receivers (no TQ1): priority in OBR-5 and ORC-7/OBR-27 TQ; delimiters in values escaped (§2.7)."""
    from hl7_bridge.outbound.encode import OrderContext, encode_order

    sr = order("p1", "A^B&C", occurrenceDateTime="2024-03-06T08:00:00Z")
    text = encode_order(OrderContext(sr, {"name": [{"family": "O|Brien"}], "gender": "male"}), event="cancel",
                        message_type="ORM^O01", version="2.3", control_id="X1", sending_app="S", sending_facility="F",
                        receiving_app="R", receiving_facility="L")
    m = parse(text)
    assert m.first("TQ1") is None and m.first("ORC").get(1) == "CA"
    assert m.first("ORC").get(2) == "A^B&C" and m.first("ORC").raw(2).startswith("A\\S\\B\\T\\C^")
    assert m.first("ORC").get(7, 4) == "20240306080000+0000" and m.first("OBR").get(5) == "S"
    assert m.first("PID").get(5) == "O|Brien" and m.first("PID").get(8) == "M"

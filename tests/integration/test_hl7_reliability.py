"""Reliability over real sockets: malformed input answered AR/AE with nothing written, framing
trouble isolated to its connection, store-first then AA only after commit, and ``hl7 replay``."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import psycopg
import pytest

from fhir_server.audit.actor import Actor
from fhir_server.services.resources import IF_NONE_EXIST, ResourceService
from hl7_bridge.handlers.common import identifier_query
from hl7_bridge.mllp import CR, EB, SB
from tests.conftest import server_env
from tests.integration.test_hl7_support import (
    MLLPClient,
    ack_code,
    ack_segment,
    counts,
    listener_fixture,
    log_rows,
    msg,
    new_sender,
    resources,
    running_listener,
)

listener = listener_fixture(hl7_max_message_bytes=4096, hl7_idle_timeout=2.0)


def adt(app: str, control: str, *, mrn: str = "MRN-1", event: str = "A01") -> bytes:
    return msg(
        f"MSH|^~\\&|{app}|LAB|EHR|HOSP|20240301083500||ADT^{event}^ADT_A01|{control}|P|2.5.1",
        f"PID|1||{mrn}^^^HOSP^MR||Rao^Kiran||19900101|M",
        "PV1|1|O|CLINIC^1^^HOSP||||||||||||||||VIS-1^^^HOSP^VN",
    )


@pytest.mark.parametrize(
    ("name", "body", "code", "err_code"),
    [
        ("no MSH", b"PID|1||MRN-1^^^HOSP^MR||Rao^Kiran\r", "AR", "100"),
        ("wrong segment separator", None, "AR", "100"),
        ("bad encoding characters", None, "AR", "102"),
        ("MSH without MSH-9", None, "AR", "101"),
        ("unknown message type", None, "AR", "200"),
        ("unknown event", None, "AR", "201"),
        ("bad date", None, "AE", "102"),
        ("missing PID-3", None, "AE", "101"),
    ],
)
async def test_malformed_input_is_answered_and_nothing_is_written(
    listener: Any, database_url: str, name: str, body: bytes | None, code: str, err_code: str
) -> None:
    """HL7 v2.5.1 Ch. 2 (Control) acknowledgment: MSA-1 AR (AE for a field error) with ERR-3 HL7 error code (table 0357:
    100 segment sequence error, 101 required field missing, 102 data type error, 200 unsupported message type, 201
    unsupported event code) and ERR-8 User Message."""
    app, _, tenant = new_sender(database_url)
    h = f"MSH|^~\\&|{app}|LAB|EHR|HOSP|20240301083500||"
    bodies = {
        "wrong segment separator": adt(app, "W1").replace(b"\r", b"\n"),
        "bad encoding characters": f"MSH|^~|{app}|LAB|EHR|HOSP|20240301||ADT^A01|B1|P|2.5.1\rPID|1||X\r".encode(),
        "MSH without MSH-9": f"{h}|M9|P|2.5.1\rPID|1||X\r".encode(),
        "unknown message type": f"{h}ZZZ^Z01|U1|P|2.5.1\rPID|1||MRN-1^^^HOSP^MR\r".encode(),
        "unknown event": f"{h}ADT^A99|U2|P|2.5.1\rPID|1||MRN-1^^^HOSP^MR\r".encode(),
        "bad date": adt(app, "D1").replace(b"19900101", b"19901399"),
        "missing PID-3": adt(app, "P3").replace(b"MRN-1^^^HOSP^MR", b""),
    }
    async with MLLPClient(listener.port) as c:
        ack = await c.send(body if body is not None else bodies[name])
    assert ack_code(ack) == code, ack
    err = ack_segment(ack, "ERR")
    assert err is not None and err[3].split("^")[0] == err_code, ack
    assert err[8], "ERR-8 carries the reason"
    assert counts(database_url, tenant) == {}
    with psycopg.connect(database_url, autocommit=True) as conn:
        (n,) = conn.execute("SELECT count(*) FROM hl7_message WHERE status = 'error' AND ack = %s", (ack,)).fetchone()
    assert n == 1  # kept for review


async def test_unconfigured_sender_is_refused_with_ar(listener: Any, database_url: str) -> None:
    """HL7 v2.5.1 Ch. 2 (Control): an unknown MSH-3 Sending Application is rejected, MSA-1 AR with ERR-2 pointing at
    MSH."""
    async with MLLPClient(listener.port) as c:
        ack = await c.send(adt("NOBODY", "N1"))
    assert ack_code(ack) == "AR"
    assert ack_segment(ack, "ERR")[2] == "MSH^1^3"


async def test_truncated_frame_is_ar_and_the_next_frame_still_works(listener: Any, database_url: str) -> None:
    """HL7 v2 MLLP Release 1 framing (<SB> message <EB><CR>): a start block before the end block truncates the frame; it
    is answered AR (Ch. 2), the next frame is processed."""
    app, _, tenant = new_sender(database_url)
    async with MLLPClient(listener.port) as c:
        whole = adt(app, "TR2")
        cut = adt(app, "TR1")[:110]  # cut inside PID: MSH-10 is readable
        await c.send_raw(SB + cut + SB + whole + EB + CR)  # a new start block before the end block
        first, second = await c.read_ack(), await c.read_ack()
    assert ack_code(first) == "AR" and "truncated" in first and "MSA|AR|TR1" in first
    assert ack_code(second) == "AA" and "MSA|AA|TR2" in second
    assert len(resources(database_url, tenant, "Patient")) == 1


async def test_frame_cut_by_disconnect_writes_nothing(listener: Any, database_url: str) -> None:
    """HL7 v2 MLLP Release 1 framing: a frame never closed by <EB><CR> is no message; nothing is stored."""
    app, _, tenant = new_sender(database_url)
    async with MLLPClient(listener.port) as c:
        await c.send_raw(SB + adt(app, "CUT1")[:80])
    await asyncio.sleep(0.3)
    assert counts(database_url, tenant) == {} and log_rows(database_url, app) == []


async def test_oversized_message_is_ar_and_the_connection_keeps_working(listener: Any, database_url: str) -> None:
    """HL7 v2 MLLP Release 1 framing with the server's size limit: HL7 v2.5.1 Ch. 2 (Control) reject, MSA-1 AR; the
    connection stays usable."""
    app, _, tenant = new_sender(database_url)
    big = adt(app, "BIG1") + b"NTE|1||" + b"x" * 10_000 + b"\r"
    async with MLLPClient(listener.port) as c:
        ack = await c.send(big)
        assert ack_code(ack) == "AR" and "larger than 4096" in ack and "MSA|AR|BIG1" in ack
        assert ack_code(await c.send(adt(app, "SMALL1"))) == "AA"
    assert counts(database_url, tenant)["Patient"] == 1


async def test_garbage_and_idle_connections_are_closed_without_harming_others(listener: Any, database_url: str) -> None:
    """HL7 v2 MLLP Release 1: a connection sending no MLLP frames is closed, an idle one times out (server-specific
    limits); other connections are unaffected."""
    app, _, _ = new_sender(database_url)
    async with MLLPClient(listener.port) as good, MLLPClient(listener.port) as bad, MLLPClient(listener.port) as idle:
        await bad.send_raw(b"GET / HTTP/1.1\r\n" + b"\xff" * 5000)  # not MLLP at all
        assert ack_code(await good.send(adt(app, "G1"))) == "AA"
        assert bad.reader is not None and idle.reader is not None
        assert await asyncio.wait_for(bad.reader.read(), 5) == b""  # closed by the server
        assert await asyncio.wait_for(idle.reader.read(), 10) == b""  # idle timeout (2 s here)
        assert ack_code(await good.send(adt(app, "G2"))) == "AA"


async def test_message_is_stored_before_processing_and_aa_comes_after_commit(listener: Any, database_url: str) -> None:
    """Hold the lock the Patient's conditional create needs: the message row is already committed
    (status received) while nothing is written and no ACK has come; released, AA arrives and
    everything it acknowledges is visible to another connection.
    HL7 v2.5.1 Ch. 2 (Control) original acknowledgment: AA only once the message is committed."""
    app, _, tenant = new_sender(database_url)
    key = ResourceService(None, tenant, Actor("test")).lock_key(  # type: ignore[arg-type]
        IF_NONE_EXIST, "Patient", identifier_query({"system": "urn:hl7-v2:aa:HOSP", "value": "MRN-1"})
    )
    with psycopg.connect(database_url) as blocker:
        blocker.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
        async with MLLPClient(listener.port) as c:
            await c.send_raw(SB + adt(app, "S1") + EB + CR)
            for _ in range(100):
                rows = log_rows(database_url, app)
                if rows:
                    break
                await asyncio.sleep(0.05)
            assert rows and rows[0]["status"] == "received" and rows[0]["processed_at"] is None
            assert counts(database_url, tenant) == {}
            with pytest.raises(TimeoutError):
                await c.read_ack(timeout=0.5)  # no ACK while the transaction cannot commit
            blocker.rollback()  # release
            ack = await c.read_ack()
    assert ack_code(ack) == "AA"
    [row] = log_rows(database_url, app)
    assert row["status"] == "processed" and row["received_at"] < row["processed_at"]
    assert len(row["resources"]) == 3 and counts(database_url, tenant) == {"Patient": 1, "Location": 1, "Encounter": 1}


def test_replay_reprocesses_messages_kept_with_errors(database_url: str) -> None:
    """HL7 v2.5.1 Ch. 2 (Control) acknowledgment of a replayed message (AA, then returned for repeats of its MSH-10);
    ``hl7 replay`` itself is server-specific (README "HL7 v2 bridge")."""
    async def send(app: str) -> str:
        async for server in running_listener(database_url):
            async with MLLPClient(server.port) as c:
                return await c.send(adt(app, "RP1", mrn="MRN-RP"))
        raise AssertionError

    app, _, tenant = new_sender(database_url, unknown_patient="refuse")
    assert ack_code(asyncio.run(send(app))) == "AE"
    [row] = log_rows(database_url, app)
    assert row["status"] == "error" and row["attempts"] == 1
    with psycopg.connect(database_url, autocommit=True) as conn:  # the operator changes the policy …
        conn.execute("UPDATE hl7_sender SET options = '{}'::jsonb WHERE sending_app = %s", (app,))
    out = subprocess.run(  # … and replays by id
        [sys.executable, "-m", "fhir_server.cli", "hl7", "replay", "--id", str(row["id"])],
        env=server_env(DATABASE_URL=database_url), capture_output=True, text=True, timeout=120, check=False,
    )
    assert out.returncode == 0, out.stderr
    assert f"{row['id']}: AA" in out.stdout
    [row] = log_rows(database_url, app)
    assert row["status"] == "processed" and row["attempts"] == 2 and row["ack_code"] == "AA"
    assert counts(database_url, tenant) == {"Patient": 1, "Location": 1, "Encounter": 1}
    # the replayed message's ACK is now what a repeat gets
    assert ack_code(asyncio.run(send(app))) == "AA"
    assert counts(database_url, tenant) == {"Patient": 1, "Location": 1, "Encounter": 1}


def test_sender_cli_add_list_remove(database_url: str) -> None:
    """Spec: none, server-specific CLI (README "HL7 v2 bridge"); a sender is keyed by MSH-3 Sending Application and
    MSH-4 Sending Facility (HL7 v2.5.1 Ch. 2)."""
    env = server_env(DATABASE_URL=database_url)

    def cli(*args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "fhir_server.cli", "hl7", *args], env=env,
                             capture_output=True, text=True, timeout=120, check=False)
        assert out.returncode == 0, out.stderr
        return out.stdout

    cli("sender", "add", "--app", "CLIAPP", "--facility", "F1", "--tenant", "cli-tenant", "--agent", "Device/an-1",
        "--unknown-patient", "refuse", "--system", "HOSP=http://hospital.example.org/mrn", "--timezone", "Asia/Kolkata")
    listed = cli("sender", "list")
    assert '"sending_app": "CLIAPP"' in listed and "http://hospital.example.org/mrn" in listed and "Device/an-1" in listed
    cli("sender", "remove", "--app", "CLIAPP", "--facility", "F1")
    assert "CLIAPP" not in cli("sender", "list")

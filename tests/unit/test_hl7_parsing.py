"""The bridge's pure parts: parser (escapes, repetitions, components, subcomponents, MSH-2,
MSH-18), timestamps of every precision, MLLP framing fed byte by byte, ACK/ERR building."""

from __future__ import annotations

import pytest

from hl7_bridge.ack import ErrorDetail, build_ack, escape
from hl7_bridge.decode import HL7ParseError, decode, parse, unescape
from hl7_bridge.mllp import CR, EB, SB, Framer
from mappings.functions import MappingError, dt_to_date, dtm_to_datetime, dtm_to_instant, reference_range

MSH = "MSH|^~\\&|APP|FAC|RCV|RFAC|20240101||ORU^R01|C1|P|2.5.1"


def test_escape_sequences_unescape_to_the_delimiters_they_stand_for() -> None:
    m = parse(MSH + "\rOBX|1|ST|X||A\\F\\B\\S\\C\\T\\D\\R\\E\\E\\F\\X41\\G\\.br\\H\r")
    assert m.first("OBX").get(5) == "A|B^C&D~E\\FAG\nH"


def test_other_encoding_characters_from_msh2() -> None:
    m = parse("MSH#!*/%#APP#FAC#R#RF#2024##ADT!A01#C2#P#2.3\rPID#1##123!!!HOSP%1.2%ISO*456###A/F/B!x%y\r")
    pid = m.first("PID")
    assert m.message_type == "ADT^A01" and pid.get(3) == "123"
    assert [r.c(1) for r in pid.reps(3)] == ["123", "456"]
    assert pid.f(3).sub(4).c(2) == "1.2"  # subcomponent
    assert pid.f(6).c(1) == "A#B" and pid.f(6).c(2, 1) == "x" and pid.f(6).c(2, 2) == "y"


def test_z_segments_are_kept() -> None:
    m = parse(MSH + "\rZXY|1|local\rPID|1||9\r")
    assert [s.name for s in m] == ["MSH", "ZXY", "PID"] and m.first("ZXY").get(2) == "local"


@pytest.mark.parametrize(("charset", "raw", "text"), [
    ("8859/1", "Jos\xe9".encode("latin-1"), "José"),
    ("UNICODE UTF-8", "José".encode(), "José"),
    ("", "José".encode(), "José"),
])
def test_msh18_character_set_decodes_the_message(charset: str, raw: bytes, text: str) -> None:
    data = (MSH + f"|||||{charset}\rPID|1||1||").encode() + raw + b"\r"
    decoded, _ = decode(data)
    assert parse(decoded).first("PID").get(5) == text


def test_hex_escape_uses_the_message_charset() -> None:
    m = parse(MSH + "|||||UNICODE UTF-8\rOBX|1|ST|X||\\XC3A9\\\r", "utf-8")
    assert m.first("OBX").get(5) == "é"


@pytest.mark.parametrize(("text", "code"), [
    ("PID|1\r", "100"), ("MSH|^~|A\r", "102"), ("MSH|^~\\&|A|B|C|D|2024||ADT^A01||P|2.5\r", "101"),
    (MSH.replace("\r", "") + "\nPID|1\n", "100"), (MSH + "\rpid|1\r", "100"), ("MSH|^^\\&|A\r", "102"),
])
def test_malformed_messages_raise_with_a_table_0357_code(text: str, code: str) -> None:
    with pytest.raises(HL7ParseError) as info:
        parse(text)
    assert info.value.code == code


@pytest.mark.parametrize(("value", "dt"), [
    ("2024", "2024"), ("202403", "2024-03"), ("20240305", "2024-03-05"),
    ("2024030510", "2024-03-05T10:00:00Z"), ("202403051015", "2024-03-05T10:15:00Z"),
    ("20240305101530", "2024-03-05T10:15:30Z"), ("20240305101530.1234", "2024-03-05T10:15:30.1234Z"),
    ("20240305101530+0530", "2024-03-05T10:15:30+05:30"), ("202403051015-0500", "2024-03-05T10:15:00-05:00"),
    ("20240305+0100", "2024-03-05"),
])
def test_timestamps_of_every_precision(value: str, dt: str) -> None:
    assert dtm_to_datetime(value) == dt


def test_timestamps_without_zone_take_the_senders_zone_and_instants_pad() -> None:
    assert dtm_to_datetime("202403051015", "Asia/Kolkata") == "2024-03-05T10:15:00+05:30"
    assert dtm_to_instant("20240305", "UTC") == "2024-03-05T00:00:00Z"
    assert dt_to_date("20240305101500") == "2024-03-05"
    for bad in ("2024-03-05", "20241305", "20240230", "abc"):
        with pytest.raises(MappingError):
            dtm_to_datetime(bad)


def test_reference_range_parsing() -> None:
    unit = {"unit": "mg/dL"}
    assert reference_range("70-110", unit) == {"text": "70-110", "low": {"value": 70, "unit": "mg/dL"},
                                               "high": {"value": 110, "unit": "mg/dL"}}
    assert reference_range(">5.5", None) == {"text": ">5.5", "low": {"value": 5.5}}
    assert reference_range("negative", None) == {"text": "negative"}


def test_framer_reassembles_frames_fed_byte_by_byte() -> None:
    f = Framer(1000)
    out = []
    for b in SB + b"MSH|1" + EB + CR + b"\r\n" + SB + b"MSH|2" + EB + CR:
        out += f.feed(bytes([b]))
    assert [(fr.kind, fr.data) for fr in out] == [("message", b"MSH|1"), ("message", b"MSH|2")]
    assert not f.partial


def test_framer_reports_truncated_and_oversized_frames() -> None:
    f = Framer(10)
    out = f.feed(SB + b"MSH|cut" + SB + b"MSH|ok" + EB + CR + SB + b"MSH|" + b"x" * 50 + EB + CR)
    assert [(fr.kind, fr.data[:6]) for fr in out] == [("truncated", b"MSH|cu"), ("message", b"MSH|ok"), ("oversized", b"MSH|xx")]
    g = Framer(10)
    g.feed(b"garbage without frames")
    assert g.junk > 10


def test_ack_with_err_for_v25_and_escaped_reason() -> None:
    m = parse(MSH + "\r")
    ack = build_ack("AE", m, error=ErrorDetail("bad | value", "102", "OBX", 3, 5))
    segs = ack.text.split("\r")
    assert segs[0].startswith("MSH|^~\\&|RCV|RFAC|APP|FAC|") and "|ACK^R01^ACK|" in segs[0]
    assert segs[1] == "MSA|AE|C1|bad \\F\\ value"
    assert segs[2] == "ERR||OBX^3^5|102^Data type error^HL70357|E||||bad \\F\\ value"
    assert unescape(escape("a|b^c&d~e\\f"), m.enc) == "a|b^c&d~e\\f"

"""ACK messages (v2 section 2.9, original acknowledgment mode): MSA-1 AA / AE / AR, MSA-2 the
MSH-10 being answered, and for an error an ERR segment: ERR-2 location (segment^sequence^field),
ERR-3 the HL7 error code (table 0357), ERR-4 severity, ERR-8 the user message. v2.3/v2.4 receivers
get ERR-1 (ELD: segment^sequence^field^code&text&HL70357) instead, which those versions define.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from datetime import UTC, datetime

from hl7_bridge.decode import DEFAULT_ENCODING, Encoding, Message

__all__ = ["ERROR_TEXT", "Ack", "ErrorDetail", "build_ack", "escape"]

# HL7 table 0357 (message error condition codes)
ERROR_TEXT = {
    "0": "Message accepted", "100": "Segment sequence error", "101": "Required field missing",
    "102": "Data type error", "103": "Table value not found", "104": "Value too long",
    "200": "Unsupported message type", "201": "Unsupported event code", "202": "Unsupported processing id",
    "203": "Unsupported version id", "204": "Unknown key identifier", "205": "Duplicate key identifier",
    "206": "Application record locked", "207": "Application internal error",
}

_counter = itertools.count(1)
_PREFIX = f"{os.getpid():x}"


@dataclass(frozen=True, slots=True)
class ErrorDetail:
    reason: str  # ERR-8, the user message
    code: str = "207"  # ERR-3, table 0357
    segment: str = ""  # ERR-2.1
    position: int = 1  # ERR-2.2 (segment sequence)
    field: int | None = None  # ERR-2.3

    @property
    def location(self) -> str:
        if not self.segment:
            return ""
        return f"{self.segment}-{self.field}" if self.field else self.segment


@dataclass(frozen=True, slots=True)
class Ack:
    code: str  # AA | AE | AR
    text: str  # the whole ACK message (segments separated by <CR>)
    error: ErrorDetail | None = None

    def encode(self, codec: str = "utf-8") -> bytes:
        return self.text.encode(codec, "replace")


def escape(value: str, enc: Encoding = DEFAULT_ENCODING) -> str:
    """Text → v2 escaped (v2 section 2.7.1), escape character first."""
    e = enc.escape
    value = value.replace(e, f"{e}E{e}")
    for ch, code in ((enc.field, "F"), (enc.component, "S"), (enc.subcomponent, "T"), (enc.repetition, "R")):
        value = value.replace(ch, f"{e}{code}{e}")
    return value.replace("\r", f"{e}X0D{e}").replace("\n", f"{e}.br{e}")


def _ts() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S.%f")[:-2] + "+0000"


def build_ack(
    code: str, msg: Message | None, *, error: ErrorDetail | None = None, text: str = "",
    fallback: dict[str, str] | None = None,
) -> Ack:
    """The ACK for ``msg`` (or, for a message that could not be parsed, for the MSH values that
    could be read: ``fallback`` with keys 3,4,5,6,9.2,10,11,12)."""
    enc = msg.enc if msg is not None else DEFAULT_ENCODING
    enc = Encoding(enc.field, enc.component, enc.repetition, enc.escape, enc.subcomponent)  # no truncation char
    fb = fallback or {}
    if msg is not None:
        msh = msg.msh
        fields = {k: msh.raw(int(k)) for k in ("3", "4", "5", "6", "10", "11", "12")}
        trigger = msh.get(9, 2)
    else:
        fields = {k: escape(fb.get(k, ""), enc) for k in ("3", "4", "5", "6", "10", "11", "12")}
        trigger = escape(fb.get("9.2", ""), enc)
    version = fields["12"] or "2.5.1"
    processing = fields["11"] or "P"
    fs, cs = enc.field, enc.component
    control = f"ACK{_PREFIX}{next(_counter):08d}"
    msh = fs.join([
        "MSH", enc.msh2, fields["5"], fields["6"], fields["3"], fields["4"], _ts(), "",
        f"ACK{cs}{trigger}{cs}ACK" if trigger else "ACK", control, processing, version,
    ])
    segments = [msh, fs.join(["MSA", code, fields["10"], escape(text or (error.reason if error else ""), enc)[:80]])]
    if error is not None:
        label = ERROR_TEXT.get(error.code, "")
        old = version.split(".")[:2] in (["2", "3"], ["2", "4"], ["2", "2"], ["2", "1"])
        loc = cs.join([error.segment, str(error.position) if error.segment else "", str(error.field or "")]).rstrip(cs)
        if old:
            sub = enc.subcomponent
            eld = cs.join([error.segment, str(error.position) if error.segment else "", str(error.field or ""),
                           sub.join([error.code, escape(label, enc), "HL70357"])])
            segments.append(fs.join(["ERR", eld]))
        else:
            severity = "E"
            segments.append(fs.join([
                "ERR", "", loc, cs.join([error.code, escape(label, enc), "HL70357"]), severity, "", "", "",
                escape(error.reason, enc),
            ]))
    return Ack(code, "\r".join(segments) + "\r", error)

"""HL7 v2 bytes → ``Message``: character set from MSH-18, encoding characters from MSH-1/MSH-2,
segments split on <CR>, fields, repetitions, components and subcomponents split lazily and
unescaped (``\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh\\ \\.br\\``) only when a value is read.

Our own parser (not hl7apy or python-hl7): measured on the 200 sample messages it is the fastest
and the only one of the three that is right on every escape case we test; see hl7_bridge/README.md.
Z-segments and unknown segments are kept (``Message.segments``) and otherwise ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Component", "Encoding", "HL7ParseError", "Message", "Segment", "charset_of", "decode", "parse"]


class HL7ParseError(Exception):
    """The message cannot be read. ``segment``/``field`` locate it (ERR-2), ``code`` is table 0357."""

    def __init__(self, reason: str, *, segment: str = "MSH", position: int = 1, field: int | None = None,
                 code: str = "102") -> None:
        super().__init__(reason)
        self.reason = reason
        self.segment = segment
        self.position = position
        self.field = field
        self.code = code


# MSH-18 (HL7 table 0211) → Python codec. Unlisted values fall back to the default charset.
CHARSETS = {
    "ASCII": "ascii", "8859/1": "latin-1", "8859/2": "iso8859-2", "8859/3": "iso8859-3", "8859/4": "iso8859-4",
    "8859/5": "iso8859-5", "8859/6": "iso8859-6", "8859/7": "iso8859-7", "8859/8": "iso8859-8",
    "8859/9": "iso8859-9", "8859/15": "iso8859-15", "UNICODE UTF-8": "utf-8", "UNICODE": "utf-8",
    "UTF-8": "utf-8", "UNICODE UTF-16": "utf-16", "UNICODE UTF-32": "utf-32", "ISO IR6": "ascii",
    "ISO IR100": "latin-1", "ISO IR192": "utf-8", "ISO IR87": "iso2022_jp", "ISO IR159": "iso2022_jp_2",
    "GB 18030-2000": "gb18030", "KS X 1001": "euc_kr", "CNS 11643-1992": "big5", "BIG-5": "big5",
}


@dataclass(frozen=True, slots=True)
class Encoding:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str | None = None  # v2.7 MSH-2 fifth character
    codec: str = "utf-8"

    @property
    def msh2(self) -> str:
        return self.component + self.repetition + self.escape + self.subcomponent + (self.truncation or "")


DEFAULT_ENCODING = Encoding()


def charset_of(raw: bytes) -> str | None:
    """MSH-18 read from the raw bytes (MSH is ASCII in every charset of table 0211 except UTF-16/32)."""
    end = raw.find(b"\r")
    msh = raw[: end if end >= 0 else len(raw)]
    if len(msh) < 4:
        return None
    sep = msh[3:4]
    fields = msh.split(sep)
    if len(fields) < 18:
        return None
    value = fields[17].split(msh[4:5] or b"^")[0].split(msh[5:6] or b"~")[0].strip()
    return value.decode("ascii", "replace").upper() or None


def decode(raw: bytes, default_charset: str = "utf-8") -> tuple[str, str]:
    """(text, codec): the message decoded with its MSH-18 character set, else ``default_charset``,
    else latin-1 (which never fails, so a bad byte never stops a message from being answered)."""
    declared = charset_of(raw)
    codec = CHARSETS.get(declared or "", default_charset)
    for attempt in (codec, default_charset):
        try:
            return raw.decode(attempt), attempt
        except (UnicodeDecodeError, LookupError):
            continue
    return raw.decode("latin-1"), "latin-1"


_HEX = re.compile(r"[0-9A-Fa-f]+")


def unescape(value: str, enc: Encoding) -> str:
    r"""Escape sequences of v2 section 2.7: \F\ \S\ \T\ \R\ \E\ \Xhh..\ and \.br\ (a line break);
    formatting commands (\H\ \N\ \.sp…) are dropped; unknown sequences are kept as they are."""
    esc = enc.escape
    if esc not in value:
        return value
    out: list[str] = []
    i, n = 0, len(value)
    while i < n:
        ch = value[i]
        if ch != esc:
            out.append(ch)
            i += 1
            continue
        end = value.find(esc, i + 1)
        if end < 0:  # a lone escape character: keep it
            out.append(value[i:])
            break
        seq = value[i + 1 : end]
        i = end + 1
        if seq == "F":
            out.append(enc.field)
        elif seq == "S":
            out.append(enc.component)
        elif seq == "T":
            out.append(enc.subcomponent)
        elif seq == "R":
            out.append(enc.repetition)
        elif seq == "E":
            out.append(esc)
        elif seq == "P" and enc.truncation:
            out.append(enc.truncation)
        elif seq[:1] == "X" and _HEX.fullmatch(seq[1:] or "-") and len(seq) % 2 == 1:
            data = bytes.fromhex(seq[1:])
            try:
                out.append(data.decode(enc.codec))
            except (UnicodeDecodeError, LookupError):
                out.append(data.decode("latin-1"))
        elif seq in (".br", ".sp"):
            out.append("\n")
        elif seq in ("H", "N") or seq.startswith((".sp", ".in", ".ti", ".sk", ".ce", ".fi", ".nf")):
            continue
        else:
            out.append(esc + seq + esc)  # \Zxx\ and other local/unknown escapes stay as sent
    return "".join(out)


class Component:
    """One repetition of a field (or one component with subcomponents): lazily split, 1-based."""

    __slots__ = ("_parts", "enc", "raw")

    def __init__(self, raw: str, enc: Encoding) -> None:
        self.raw = raw
        self.enc = enc
        self._parts: list[str] | None = None

    def _split(self) -> list[str]:
        if self._parts is None:
            self._parts = self.raw.split(self.enc.component)
        return self._parts

    def c(self, n: int, s: int | None = None) -> str:
        """Component ``n`` (1-based), unescaped; with ``s`` only that subcomponent, else the whole
        component (subcomponent separators kept as ``&``-joined raw, unescaped)."""
        parts = self._split()
        if n > len(parts):
            return ""
        value = parts[n - 1]
        if s is not None:
            subs = value.split(self.enc.subcomponent)
            return unescape(subs[s - 1], self.enc) if s <= len(subs) else ""
        if self.enc.subcomponent in value:
            return unescape(value.split(self.enc.subcomponent)[0], self.enc)
        return unescape(value, self.enc)

    def sub(self, n: int) -> Component:
        """Component ``n`` as a composite of its subcomponents (for HD inside CX.4, etc.)."""
        parts = self._split()
        value = parts[n - 1] if n <= len(parts) else ""
        return Component(value.replace(self.enc.subcomponent, self.enc.component), self.enc) if value else Component("", self.enc)

    @property
    def text(self) -> str:
        """The whole value unescaped (components/subcomponents left in place)."""
        return unescape(self.raw, self.enc)

    def __bool__(self) -> bool:
        return bool(self.raw.strip(self.enc.component + self.enc.subcomponent))

    def __repr__(self) -> str:
        return f"Component({self.raw!r})"


class Segment:
    __slots__ = ("enc", "fields", "index", "name")

    def __init__(self, name: str, fields: list[str], enc: Encoding, index: int) -> None:
        self.name = name
        self.fields = fields  # fields[0] is the name; for MSH fields[1] is "|" and fields[2] MSH-2
        self.enc = enc
        self.index = index  # 1-based position in the message (ERR-2.2)

    def raw(self, n: int) -> str:
        return self.fields[n] if n < len(self.fields) else ""

    def reps(self, n: int) -> list[Component]:
        """The repetitions of field ``n`` (empty list if not valued)."""
        raw = self.raw(n)
        if not raw:
            return []
        if self.name == "MSH" and n <= 2:
            return [Component(raw.replace(self.enc.component, "\x00"), self.enc)]
        return [Component(r, self.enc) for r in raw.split(self.enc.repetition) if r]

    def f(self, n: int, rep: int = 1) -> Component:
        reps = self.reps(n)
        return reps[rep - 1] if rep <= len(reps) else Component("", self.enc)

    def get(self, n: int, comp: int = 1, sub: int | None = None) -> str:
        """Field ``n``, first repetition, component ``comp`` (subcomponent ``sub``), unescaped."""
        if self.name == "MSH" and n <= 2:
            return self.raw(n)
        return self.f(n).c(comp, sub)

    def valued(self, n: int) -> bool:
        raw = self.raw(n)
        return bool(raw) and raw != '""'

    def __repr__(self) -> str:
        return f"Segment({self.name}, {len(self.fields) - 1} fields)"


class Message:
    __slots__ = ("enc", "segments", "text")

    def __init__(self, text: str, enc: Encoding, segments: list[Segment]) -> None:
        self.text = text
        self.enc = enc
        self.segments = segments

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    def first(self, name: str) -> Segment | None:
        return next((s for s in self.segments if s.name == name), None)

    def all(self, name: str) -> list[Segment]:
        return [s for s in self.segments if s.name == name]

    def __iter__(self) -> Iterator[Segment]:
        return iter(self.segments)

    # MSH shortcuts
    @property
    def sending_app(self) -> str:
        return self.msh.get(3)

    @property
    def sending_facility(self) -> str:
        return self.msh.get(4)

    @property
    def control_id(self) -> str:
        return self.msh.get(10)

    @property
    def message_code(self) -> str:
        return self.msh.get(9, 1)

    @property
    def trigger(self) -> str:
        return self.msh.get(9, 2)

    @property
    def message_type(self) -> str:
        """``ADT^A01`` (MSH-9.1^MSH-9.2)."""
        return f"{self.message_code}^{self.trigger}" if self.trigger else self.message_code

    @property
    def version(self) -> str:
        return self.msh.get(12)


_SEG_NAME = re.compile(r"[A-Z][A-Z0-9]{2}")


def encoding_of(text: str, codec: str = "utf-8") -> Encoding:
    """MSH-1 and MSH-2 checked: a field separator and 4 (5 from v2.7) distinct delimiters, none
    alphanumeric, a space or a segment terminator."""
    if not text.startswith("MSH"):
        raise HL7ParseError("the message does not start with an MSH segment", segment="MSH", field=None, code="100")
    if len(text) < 8:
        raise HL7ParseError("MSH is truncated before its encoding characters", field=2, code="101")
    fs = text[3]
    end = text.find(fs, 4)
    msh2 = text[4:end] if end >= 0 else ""
    chars = fs + msh2
    if end < 0 or len(msh2) not in (4, 5) or len(set(chars)) != len(chars) or any(
        c.isalnum() or c in " \r\n\t" for c in chars
    ):
        raise HL7ParseError(
            f"MSH-1/MSH-2 encoding characters {chars[:6]!r} are not a field separator and 4 or 5 distinct delimiters",
            field=2, code="102",
        )
    return Encoding(fs, msh2[0], msh2[1], msh2[2], msh2[3], msh2[4] if len(msh2) == 5 else None, codec)


def parse(text: str, codec: str = "utf-8", *, accept_lf: bool = False) -> Message:
    """Segments split on <CR> (v2 section 2.5). <CR><LF> is accepted; a bare <LF> separator only
    with ``accept_lf`` (else the message is refused: the segment terminator is <CR>)."""
    text = text.lstrip("\r\n\x00 ")
    enc = encoding_of(text, codec)
    if "\n" in text:
        if "\r" not in text.rstrip("\r\n") and not accept_lf:
            raise HL7ParseError("segments must be separated by <CR> (0x0D), not <LF>", field=None, code="100")
        text = text.replace("\r\n", "\r").replace("\n", "\r") if accept_lf else text.replace("\r\n", "\r")
    segments: list[Segment] = []
    for line in text.split("\r"):
        if not line.strip():
            continue
        name = line[:3]
        if not _SEG_NAME.fullmatch(name) or (len(line) > 3 and line[3] != enc.field):
            raise HL7ParseError(f"segment {len(segments) + 1} has no valid segment id ({line[:8]!r})",
                                segment=name if _SEG_NAME.fullmatch(name) else "", position=len(segments) + 1, code="100")
        fields = line.split(enc.field)
        if name == "MSH":
            if segments:
                raise HL7ParseError("a second MSH segment inside one message", position=len(segments) + 1, code="100")
            fields = ["MSH", enc.field, *fields[1:]]
        segments.append(Segment(name, fields, enc, len(segments) + 1))
    msh = segments[0]
    for n, what in ((9, "message type"), (10, "message control id"), (12, "version id")):
        if not msh.get(n):
            raise HL7ParseError(f"MSH-{n} ({what}) is required", field=n, code="101")
    return Message(text, enc, segments)

"""Named, typed conversions the mapping tables refer to (``datatype_map`` = ``fn:<name>`` or a
primitive like ``DTM[dateTime]``). Anything more than equals/in/valued belongs here, unit-tested
(tests/unit/test_hl7_mappings.py), never as an expression language inside the CSVs.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from urllib.parse import quote
from zoneinfo import ZoneInfo

__all__ = [
    "MappingError",
    "authority_system",
    "decimal_of",
    "dt_to_date",
    "dtm_to_datetime",
    "dtm_to_instant",
    "reference_range",
]


class MappingError(Exception):
    """A value that cannot become FHIR. ``location`` is the v2 place (``OBX-5``), for ERR-2."""

    def __init__(self, reason: str, location: str = "", code: str = "102", position: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.location = location  # "PID-3", "OBX-5": ERR-2 segment and field
        self.code = code  # HL7 table 0357
        self.position = position  # the segment's sequence in the message (ERR-2.2), when known


# DTM (v2 2A.3.22): YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]
_DTM = re.compile(
    r"(?P<y>\d{4})(?:(?P<mo>\d{2})(?:(?P<d>\d{2})(?:(?P<h>\d{2})(?:(?P<mi>\d{2})(?:(?P<s>\d{2})(?:\.(?P<f>\d{1,4}))?)?)?)?)?)?"
    r"(?P<z>[+-]\d{4})?"
)


def _zone(z: str | None, default_tz: str) -> timezone | ZoneInfo:
    if z:
        sign = -1 if z[0] == "-" else 1
        return timezone(sign * timedelta(hours=int(z[1:3]), minutes=int(z[3:5])))
    return UTC if default_tz in ("UTC", "Z", "") else ZoneInfo(default_tz)


def _offset(dt: datetime) -> str:
    off = dt.utcoffset() or timedelta(0)
    if off == timedelta(0):
        return "Z"
    total = int(off.total_seconds() // 60)
    sign = "-" if total < 0 else "+"
    total = abs(total)
    return f"{sign}{total // 60:02d}:{total % 60:02d}"


def _parse(value: str, default_tz: str) -> tuple[re.Match[str], datetime | None]:
    v = value.strip()
    m = _DTM.fullmatch(v)
    if m is None:
        raise MappingError(f"'{value}' is not an HL7 date/time (YYYY[MM[DD[HH[MM[SS[.SSSS]]]]]][+/-ZZZZ])")
    if m["h"] is None:
        if m["mo"]:
            _check_date(int(m["y"]), int(m["mo"]), int(m["d"] or 1), value)
        return m, None
    try:
        dt = datetime(
            int(m["y"]), int(m["mo"]), int(m["d"]), int(m["h"]), int(m["mi"] or 0), int(m["s"] or 0),
            int((m["f"] or "0").ljust(6, "0")[:6]), tzinfo=_zone(m["z"], default_tz),
        )
    except ValueError as exc:
        raise MappingError(f"'{value}' is not a valid date/time: {exc}") from None
    return m, dt


def _check_date(y: int, mo: int, d: int, value: str) -> None:
    try:
        datetime(y, mo, d)
    except ValueError as exc:
        raise MappingError(f"'{value}' is not a valid date: {exc}") from None


def dtm_to_datetime(value: str, default_tz: str = "UTC") -> str:
    """FHIR dateTime at the precision sent: ``2024``, ``2024-03``, ``2024-03-05``; with a time,
    seconds (and fractions) and a zone, which is the message's own or else ``default_tz`` (the
    sender's configured zone), as FHIR requires a zone whenever a time is given."""
    m, dt = _parse(value, default_tz)
    if dt is None:
        return "-".join(p for p in (m["y"], m["mo"], m["d"]) if p)
    frac = f".{m['f']}" if m["f"] else ""
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + frac + _offset(dt)


def dtm_to_instant(value: str, default_tz: str = "UTC") -> str:
    """FHIR instant: a date-only value is taken as the start of that day in the zone."""
    m, dt = _parse(value, default_tz)
    if dt is None:
        dt = datetime(int(m["y"]), int(m["mo"] or 1), int(m["d"] or 1), tzinfo=_zone(m["z"], default_tz))
    frac = f".{m['f']}" if m["f"] else ""
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + frac + _offset(dt)


def dt_to_date(value: str, default_tz: str = "UTC") -> str:
    """FHIR date from DT or DTM (the time part, if any, is dropped)."""
    m, _ = _parse(value, default_tz)
    return "-".join(p for p in (m["y"], m["mo"], m["d"]) if p)


def decimal_of(value: str) -> float | int:
    """NM → a JSON number (``+1.50`` → 1.5; ``1.0`` keeps the decimal point as 1.0)."""
    v = value.strip()
    try:
        d = Decimal(v)
    except InvalidOperation:
        raise MappingError(f"'{value}' is not a number (NM)") from None
    if not d.is_finite():
        raise MappingError(f"'{value}' is not a number (NM)")
    return int(d) if d == d.to_integral_value() and "." not in v and "e" not in v.lower() else float(d)


_RANGE = re.compile(r"\s*(?P<lo>[-+]?\d+(?:\.\d+)?)?\s*(?:-|–|to)\s*(?P<hi>[-+]?\d+(?:\.\d+)?)?\s*")
_BOUND = re.compile(r"\s*(?P<op><=|>=|<|>)\s*(?P<v>[-+]?\d+(?:\.\d+)?)\s*")


def reference_range(text: str, unit: dict[str, object] | None) -> dict[str, object]:
    """OBX-7 → referenceRange: always the text; ``low``/``high`` too when it reads ``a-b``, ``<b``, ``>a``."""
    out: dict[str, object] = {"text": text}
    q = {k: v for k, v in (unit or {}).items() if k in ("unit", "system", "code")}
    m = _RANGE.fullmatch(text)
    if m and (m["lo"] or m["hi"]):
        if m["lo"]:
            out["low"] = {"value": decimal_of(m["lo"]), **q}
        if m["hi"]:
            out["high"] = {"value": decimal_of(m["hi"]), **q}
        return out
    b = _BOUND.fullmatch(text)
    if b:
        out["high" if b["op"].startswith("<") else "low"] = {"value": decimal_of(b["v"]), **q}
    return out


_URI = re.compile(r"[a-z][a-z0-9+.-]*:[^\s]+", re.IGNORECASE)
_OID = re.compile(r"[0-2](\.\d+)+")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)


def authority_system(namespace: str, universal_id: str, universal_type: str, systems: dict[str, str],
                     fallback: str) -> str:
    """An HD (assigning authority) → Identifier.system. The sender's map wins (keyed by namespace id
    or universal id); else ISO OIDs → ``urn:oid:``, UUIDs → ``urn:uuid:``, URIs as they are; else a
    URN naming the namespace (``urn:hl7-v2:aa:<ns>``); with no authority at all, ``fallback``."""
    for key in (namespace, universal_id, f"{namespace}&{universal_id}"):
        if key and key in systems:
            return systems[key]
    if universal_id:
        if universal_type.upper() == "ISO" or _OID.fullmatch(universal_id):
            return f"urn:oid:{universal_id}"
        if universal_type.upper() == "UUID" or _UUID.fullmatch(universal_id):
            return f"urn:uuid:{universal_id.lower()}"
        if _URI.fullmatch(universal_id):
            return universal_id
    ns = namespace or universal_id
    if ns:
        return f"urn:hl7-v2:aa:{quote(ns, safe='')}"
    return fallback


# ---- durations (SIU: AIS-5..-8, AIG-9..-12, AIL-7..-10, AIP-7..-10; SCH-9/SCH-10) ---------------
_UNIT_SECONDS = {
    "s": 1, "sec": 1, "second": 1, "seconds": 1, "min": 60, "minute": 60, "minutes": 60, "m": 60,
    "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600, "d": 86400, "day": 86400, "days": 86400,
    "wk": 604800, "week": 604800, "weeks": 604800,
}


def duration_seconds(amount: str, unit: str) -> int:
    """An NM amount in CNE units (ISO+/ANSI/UCUM: ``s``, ``min``, ``h``, ``d``, ``wk``; default
    minutes, the unit SIU assumes) → seconds."""
    factor = _UNIT_SECONDS.get((unit or "min").strip().lower())
    if factor is None:
        raise MappingError(f"'{unit}' is not a duration unit (s, min, h, d, wk)")
    return int(Decimal(str(decimal_of(amount))) * factor)


def shift_datetime(value: str, seconds: int) -> str:
    """A FHIR dateTime with a time and zone (as ``dtm_to_datetime`` writes it) moved by ``seconds``,
    written the same way in the same offset."""
    dt = datetime.fromisoformat(value) + timedelta(seconds=seconds)
    frac = f".{dt.microsecond:06d}".rstrip("0") if dt.microsecond else ""
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + frac + _offset(dt)


def minutes_between(start: str, end: str) -> int:
    """Whole minutes from one FHIR dateTime (with time and zone) to another."""
    a = datetime.fromisoformat(start)
    b = datetime.fromisoformat(end)
    return int((b - a).total_seconds() // 60)

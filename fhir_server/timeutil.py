"""FHIR instants and date ranges (https://hl7.org/fhir/R4/datatypes.html#dateTime)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from fhir_server.errors import BadRequest

_DATE_RE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?P<f>\.\d+)?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def now() -> datetime:
    return datetime.now(UTC)


def format_instant(dt: datetime) -> str:
    """An R4 instant with microseconds and ``Z``: the form ``meta.lastUpdated`` is written in."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(dt: datetime) -> str:
    """RFC 9110 IMF-fixdate, e.g. ``Sun, 29 Nov 2026 09:30:15 GMT`` (no locale, unlike strftime)."""
    u = dt.astimezone(UTC)
    return (
        f"{_DAYS[u.weekday()]}, {u.day:02d} {_MONTHS[u.month - 1]} {u.year:04d} "
        f"{u.hour:02d}:{u.minute:02d}:{u.second:02d} GMT"
    )


def parse_http_date(value: str) -> datetime | None:
    try:
        return datetime.strptime(value.strip(), "%a, %d %b %Y %H:%M:%S GMT").replace(tzinfo=UTC)
    except ValueError:
        return None


def parse_range(value: str, name: str) -> tuple[datetime, datetime]:
    """The instants a date/dateTime covers at its precision: ``2024`` → the whole year.

    Returns ``(low, high)`` with ``high`` exclusive. A time without zone is taken as UTC.
    """
    m = _DATE_RE.match(value)
    if not m:
        raise BadRequest(f"Parameter '{name}': '{value}' is not a valid FHIR date/dateTime", expression=name)
    try:
        y = int(m["y"])
        if m["m"] is None:
            low = datetime(y, 1, 1, tzinfo=UTC)
            return low, datetime(y + 1, 1, 1, tzinfo=UTC)
        mo = int(m["m"])
        if m["d"] is None:
            low = datetime(y, mo, 1, tzinfo=UTC)
            return low, (datetime(y + 1, 1, 1, tzinfo=UTC) if mo == 12 else datetime(y, mo + 1, 1, tzinfo=UTC))
        d = int(m["d"])
        if m["H"] is None:
            low = datetime(y, mo, d, tzinfo=UTC)
            return low, low + timedelta(days=1)
        tz = UTC
        if m["tz"] and m["tz"] != "Z":
            sign = 1 if m["tz"][0] == "+" else -1
            hh, mm = int(m["tz"][1:3]), int(m["tz"][4:6])
            from datetime import timezone

            tz = timezone(sign * timedelta(hours=hh, minutes=mm))
        if m["S"] is None:
            low = datetime(y, mo, d, int(m["H"]), int(m["M"]), tzinfo=tz)
            return low, low + timedelta(minutes=1)
        frac = m["f"] or ""
        micro = int((frac[1:] + "000000")[:6]) if frac else 0
        low = datetime(y, mo, d, int(m["H"]), int(m["M"]), int(m["S"]), micro, tzinfo=tz)
        step = timedelta(microseconds=10 ** (6 - min(len(frac) - 1, 6))) if frac else timedelta(seconds=1)
        return low, low + step
    except ValueError as exc:
        raise BadRequest(f"Parameter '{name}': '{value}' is not a valid date ({exc})", expression=name) from None

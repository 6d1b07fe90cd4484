"""Values as ranges: FHIR dates at their precision and decimals at their written precision.

Shared by index extraction (stored values) and query compilation (search values), so that both
sides of a comparison are built the same way (R4 search.html#prefix, #date, #number).

Dates: ``[low, high]``, both bounds INCLUSIVE, timezone-aware, microsecond resolution: ``2024`` is
``[2024-01-01T00:00:00Z, 2024-12-31T23:59:59.999999Z]``. A value with a time but no zone, and any
date without time, is taken as UTC (the spec lets the server pick; UTC keeps answers independent
of where the server runs). Open ends are ``datetime.min`` / ``datetime.max`` in UTC.

Decimals: ``[low, high)`` half-open at half a unit of the last written digit: ``100`` ->
``[99.5, 100.5)``, ``100.0`` -> ``[99.95, 100.05)``, ``1e2`` -> ``[50, 150)``. Precision only survives
if the JSON was parsed with ``parse_float=Decimal`` (otherwise ``1.50`` arrives as the float 1.5).
"""

from __future__ import annotations

import calendar
import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation

DATE_MIN = datetime.min.replace(tzinfo=UTC)
DATE_MAX = datetime.max.replace(tzinfo=UTC)
NEG_INF = Decimal("-Infinity")
POS_INF = Decimal("Infinity")
_MICRO = timedelta(microseconds=1)

# date | dateTime | instant, and the partial forms search allows (hh:mm, no zone)
_DATE_RE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?:\.(?P<f>\d+))?)?"
    r"(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def date_range(text: str) -> tuple[datetime, datetime]:
    """The inclusive instant range a FHIR date/dateTime/instant covers. ``ValueError`` if malformed."""
    try:
        return _date_range(text)
    except OverflowError:  # a zone pushing year 1 or 9999 out of range
        raise ValueError(f"date out of range: {text!r}") from None


def _date_range(text: str) -> tuple[datetime, datetime]:
    m = _DATE_RE.match(text) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"not a FHIR date/dateTime: {text!r}")
    y = int(m["y"])
    if m["m"] is None:
        low = datetime(y, 1, 1, tzinfo=UTC)
        return low, datetime(y, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    mo = int(m["m"])
    if m["d"] is None:
        low = datetime(y, mo, 1, tzinfo=UTC)  # raises on month 13
        last = calendar.monthrange(y, mo)[1]
        return low, datetime(y, mo, last, 23, 59, 59, 999999, tzinfo=UTC)
    d = int(m["d"])
    if m["H"] is None:
        low = datetime(y, mo, d, tzinfo=UTC)
        return low, datetime(y, mo, d, 23, 59, 59, 999999, tzinfo=UTC)
    tz = _zone(m["tz"])
    hh, mi = int(m["H"]), int(m["M"])
    if m["S"] is None:
        low = datetime(y, mo, d, hh, mi, tzinfo=tz)
        span = timedelta(minutes=1)
    else:
        frac = m["f"] or ""
        micro = int((frac + "000000")[:6]) if frac else 0
        low = datetime(y, mo, d, hh, mi, int(m["S"]), micro, tzinfo=tz)
        # the precision of the fraction as written; beyond microseconds it is a single instant
        span = timedelta(microseconds=10 ** (6 - len(frac))) if len(frac) < 6 else _MICRO
    low = low.astimezone(UTC)
    return low, low + span - _MICRO


def _zone(tz: str | None) -> timezone:
    if tz is None or tz == "Z":
        return UTC
    sign = 1 if tz[0] == "+" else -1
    hours, minutes = int(tz[1:3]), int(tz[4:6])
    if hours > 14 or minutes > 59:
        raise ValueError(f"bad timezone {tz!r}")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def to_decimal(value: object) -> Decimal:
    """A JSON number (Decimal, int, float or numeric string) as a Decimal, keeping written precision."""
    if isinstance(value, bool):
        raise ValueError("boolean is not a number")  # noqa: TRY004 - callers catch ValueError
    if isinstance(value, Decimal):
        d = value
    elif isinstance(value, int):
        d = Decimal(value)
    elif isinstance(value, float):
        d = Decimal(repr(value))  # shortest round-trip form: 1.5 for 1.50 (precision already lost)
    elif isinstance(value, str):
        try:
            d = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"not a number: {value!r}") from None
    else:
        raise ValueError(f"not a number: {value!r}")  # noqa: TRY004
    if not d.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    return d


def decimal_range(d: Decimal) -> tuple[Decimal, Decimal]:
    """``[low, high)``: plus or minus half a unit in the last written place."""
    exp = d.as_tuple().exponent
    assert isinstance(exp, int)
    half = Decimal(5).scaleb(exp - 1)
    return d - half, d + half

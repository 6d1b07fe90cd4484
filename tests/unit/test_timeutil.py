"""Dates as ranges at their precision (https://hl7.org/fhir/R4/search.html#date, datatypes.html#dateTime)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from fhir_server.errors import BadRequest
from fhir_server.timeutil import format_instant, http_date, parse_http_date, parse_range


@pytest.mark.parametrize(
    ("value", "low", "high"),
    [
        ("2024", datetime(2024, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC)),
        ("2024-12", datetime(2024, 12, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC)),
        ("2024-02-29", datetime(2024, 2, 29, tzinfo=UTC), datetime(2024, 3, 1, tzinfo=UTC)),
        ("2024-03-01T10:00:00Z", datetime(2024, 3, 1, 10, tzinfo=UTC), datetime(2024, 3, 1, 10, 0, 1, tzinfo=UTC)),
        ("2024-03-01T10:00:00.5Z", datetime(2024, 3, 1, 10, 0, 0, 500000, tzinfo=UTC), datetime(2024, 3, 1, 10, 0, 0, 600000, tzinfo=UTC)),
        ("2024-03-01T15:30:00+05:30", datetime(2024, 3, 1, 10, tzinfo=UTC), datetime(2024, 3, 1, 10, 0, 1, tzinfo=UTC)),
    ],
)
def test_parse_range_covers_the_precision(value: str, low: datetime, high: datetime) -> None:
    assert parse_range(value, "_at") == (low, high)


@pytest.mark.parametrize("value", ["2023-02-30", "24", "2024-13", "yesterday", "2024-01-01T25:00:00Z"])
def test_parse_range_rejects_impossible_dates(value: str) -> None:
    with pytest.raises(BadRequest):
        parse_range(value, "_since")


def test_instant_and_http_date_round_trip() -> None:
    t = datetime(2026, 11, 29, 9, 30, 15, 123456, tzinfo=UTC)
    assert format_instant(t) == "2026-11-29T09:30:15.123456Z"
    assert http_date(t) == "Sun, 29 Nov 2026 09:30:15 GMT"
    assert parse_http_date(http_date(t)) == t.replace(microsecond=0)
    assert parse_http_date("not a date") is None

"""Checkers for the R4 primitive datatypes (https://hl7.org/fhir/R4/datatypes.html#primitive).

``make_checkers(regexes)`` returns ``{type code: check(value) -> error message | None}``. The
regexes come from the official StructureDefinitions (packaged by tools/build_validation_defs.py);
on top of them the checkers apply the JSON representation (json.html: numbers and booleans are
JSON numbers / true|false, never strings) and the real semantics the regexes cannot express:
calendar dates (no 2023-02-30), 32-bit integer ranges, the 1 MB string limit, no control chars.
"""

from __future__ import annotations

import calendar
import math
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

Checker = Callable[[Any], "str | None"]

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
MAX_STRING = 1024 * 1024  # datatypes.html: strings SHALL NOT exceed 1MB
_GOOD_STRING_RX = r"[^\x00-\x08\x0b\x0c\x0e-\x1f]{1,1048576}"
_GOOD_STRING = re.compile(_GOOD_STRING_RX).fullmatch
_BAD_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")  # datatypes.html#string: below 32 only tab, CR, LF
_WS = re.compile(r"\s")
_B64 = re.compile(r"[A-Za-z0-9+/ \t\r\n]*(=[ \t\r\n]*){0,2}")
_XHTML_NS = "http://www.w3.org/1999/xhtml"


def _typename(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, (int, float, Decimal)):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    if isinstance(v, dict):
        return "object"
    return type(v).__name__


def _not_json_string(v: Any, t: str) -> str:
    return f"{t} must be a JSON string, got {_typename(v)}"


def check_string(v: Any) -> str | None:
    if type(v) is str and _GOOD_STRING(v) is not None:
        return None
    if type(v) is not str:
        return _not_json_string(v, "string")
    if not v:
        return "empty string is not allowed"
    if len(v) > MAX_STRING:
        return "string longer than 1MB"
    if _BAD_CHARS.search(v):
        return "string contains a control character (only tab, CR and LF are allowed below U+0020)"
    return None


def _regex_checker(t: str, regex: str) -> Checker:
    fullmatch = re.compile(regex).fullmatch

    def check(v: Any) -> str | None:
        if type(v) is not str:
            return _not_json_string(v, t)
        if not fullmatch(v):
            return f"{v!r} is not a valid {t}" if v else "empty string is not allowed"
        return None

    return check


def _uri_checker(t: str) -> Checker:
    def check(v: Any) -> str | None:
        if type(v) is not str:
            return _not_json_string(v, t)
        if not v:
            return "empty string is not allowed"
        if _WS.search(v):
            return f"{v!r} is not a valid {t} (whitespace)"
        return None

    return check


def _days_ok(v: str) -> bool:
    if len(v) >= 10 and v[8:10] > "28":
        y, m, d = int(v[0:4]), int(v[5:7]), int(v[8:10])
        return d <= calendar.monthrange(y, m)[1]
    return True


def _date_checker(t: str, regex: str) -> Checker:
    fullmatch = re.compile(regex).fullmatch

    def check(v: Any) -> str | None:
        if type(v) is not str:
            return _not_json_string(v, t)
        if not fullmatch(v):
            if t == "instant" and v[:1].isdigit():
                return f"{v!r} is not a valid instant (needs date, time with seconds and a timezone)"
            if t == "dateTime" and "T" in v:
                return f"{v!r} is not a valid dateTime (a time needs seconds and a timezone)"
            return f"{v!r} is not a valid {t}" if v else "empty string is not allowed"
        if not _days_ok(v):
            return f"{v!r} is not a valid {t}: no such day in the calendar"
        return None

    return check


def check_boolean(v: Any) -> str | None:
    if type(v) is not bool:
        return f"boolean must be JSON true or false, got {_typename(v)}"
    return None


def _int_checker(t: str, lo: int) -> Checker:
    def check(v: Any) -> str | None:
        if type(v) is not int:
            return f"{t} must be a JSON integer, got {_typename(v)}"
        if v < lo or v > INT32_MAX:
            return f"{v} is out of range for {t} ({lo}..{INT32_MAX})"
        return None

    return check


def check_decimal(v: Any) -> str | None:
    tv = type(v)
    if tv is float:
        if not math.isfinite(v):
            return f"{v} is not a valid decimal"
        return None
    if tv is int or tv is Decimal:
        if tv is Decimal and not v.is_finite():
            return f"{v} is not a valid decimal"
        return None
    return f"decimal must be a JSON number, got {_typename(v)}"


def check_base64(v: Any) -> str | None:
    if type(v) is not str:
        return _not_json_string(v, "base64Binary")
    if not v:
        return "empty string is not allowed"
    if _B64.fullmatch(v) is None:
        return "not valid base64 content"
    n = len(v)
    if " " in v or "\n" in v or "\r" in v or "\t" in v:
        n -= v.count(" ") + v.count("\n") + v.count("\r") + v.count("\t")
    if n % 4:
        return "not valid base64 content (length is not a multiple of 4)"
    return None


def check_xhtml(v: Any) -> str | None:
    if type(v) is not str:
        return _not_json_string(v, "xhtml")
    s = v.lstrip()
    if not s.startswith("<div"):
        return "narrative must be an xhtml <div> element (txt-1)"
    head = s[: s.find(">") + 1]
    if _XHTML_NS not in head:
        return 'narrative <div> must declare xmlns="http://www.w3.org/1999/xhtml"'
    return None


def make_checkers(regexes: dict[str, str]) -> dict[str, Checker]:
    c: dict[str, Checker] = {
        "string": check_string,
        "markdown": check_string,
        "boolean": check_boolean,
        "integer": _int_checker("integer", INT32_MIN),
        "positiveInt": _int_checker("positiveInt", 1),
        "unsignedInt": _int_checker("unsignedInt", 0),
        "decimal": check_decimal,
        "base64Binary": check_base64,
        "xhtml": check_xhtml,
        "uri": _uri_checker("uri"),
        "url": _uri_checker("url"),
        "canonical": _uri_checker("canonical"),
    }
    for t in ("code", "id", "oid", "uuid", "time"):
        c[t] = _regex_checker(t, regexes[t])
    for t in ("date", "dateTime", "instant"):
        c[t] = _date_checker(t, regexes[t])
    return c


def make_fast_paths(regexes: dict[str, str]) -> dict[str, Callable[[str], Any]]:
    """``{type: fullmatch}`` accepting only valid values of string-typed primitives: the walker
    tries it first (one C call) and falls back to the full checker for diagnostics. The date
    patterns only admit days 01-28 so that a match never needs the calendar check."""
    day = "(0[1-9]|[1-2][0-9]|3[0-1])"
    fast = {
        "string": _GOOD_STRING_RX,
        "markdown": _GOOD_STRING_RX,
        "uri": r"\S+",
        "url": r"\S+",
        "canonical": r"\S+",
    }
    for t in ("code", "id", "oid", "uuid", "time"):
        fast[t] = regexes[t]
    for t in ("date", "dateTime", "instant"):
        assert day in regexes[t], t
        fast[t] = regexes[t].replace(day, "(0[1-9]|1[0-9]|2[0-8])")
    return {t: re.compile(rx).fullmatch for t, rx in fast.items()}


PRIMITIVE_TYPES = frozenset(
    [
        "base64Binary",
        "boolean",
        "canonical",
        "code",
        "date",
        "dateTime",
        "decimal",
        "id",
        "instant",
        "integer",
        "markdown",
        "oid",
        "positiveInt",
        "string",
        "time",
        "unsignedInt",
        "uri",
        "url",
        "uuid",
        "xhtml",
    ]
)

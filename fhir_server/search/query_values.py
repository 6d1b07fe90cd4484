"""Reading search values from the query string (R4 search.html#escaping, #prefix).

A parameter value is a comma-separated list of alternatives (OR); ``\\,`` ``\\|`` ``\\$`` and ``\\\\``
escape the separators. Date, number and quantity values may start with a two-letter prefix.
"""

from __future__ import annotations

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_ESCAPABLE = ",|$\\"


def split_unescaped(value: str, sep: str) -> list[str]:
    """Split at every ``sep`` not preceded by a backslash escape; the pieces keep their escapes."""
    parts, current, i = [], [], 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            current.append(value[i : i + 2])
            i += 2
            continue
        if c == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
        i += 1
    parts.append("".join(current))
    return parts


def unescape(value: str) -> str:
    out, i = [], 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value) and value[i + 1] in _ESCAPABLE:
            out.append(value[i + 1])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def split_prefix(value: str) -> tuple[str | None, str]:
    """``("ge", "2024")`` for ``ge2024``; ``(None, value)`` without a prefix. Letters that are not
    a prefix are returned as ``("??", value)`` for the caller to reject."""
    head = value[:2]
    if head in PREFIXES:
        return head, value[2:]
    if value[:1].isalpha():
        return "??", value
    return None, value


def like_escape(value: str) -> str:
    """Make ``value`` literal inside a LIKE pattern (default escape character ``\\``)."""
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def split_list(values: list[str]) -> list[str]:
    """The items of comma-separated parameter values (``_type=A,B&_type=C``), stripped, blanks dropped."""
    return [t.strip() for v in values for t in v.split(",") if t.strip()]

"""A SearchParameter expression narrowed to one resource type.

Shared parameters list one branch per base (``Patient.telecom.where(system='phone') |
Person.telecom.where(system='phone') | ...``); only the branches rooted at the resource's own type
(or at ``Resource``/``DomainResource``, rewritten to the type so that FHIRPath type checks pass)
can produce anything, so both evaluation engines get just those.
"""

from __future__ import annotations

import re

_LEAD_RE = re.compile(r"^\s*\(*\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)")
_ABSTRACT = ("Resource", "DomainResource")


def split_top_level(expression: str, sep: str = "|") -> list[str]:
    """Split on ``sep`` outside parentheses, brackets and quotes."""
    parts, depth, quote, start, i = [], 0, "", 0, 0
    while i < len(expression):
        c = expression[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = ""
        elif c in "'`\"":
            quote = c
        elif c in "([":
            depth += 1
        elif c in ")]":
            depth -= 1
        elif c == sep and depth == 0:
            parts.append(expression[start:i].strip())
            start = i + 1
        i += 1
    parts.append(expression[start:].strip())
    return [p for p in parts if p]


def expression_for_type(expression: str | None, resource_type: str, type_names: frozenset[str]) -> str | None:
    """The branches of ``expression`` that apply to ``resource_type``; ``None`` when none does.

    ``type_names`` are the names that, leading a branch, mean "only for that type".
    """
    if not expression:
        return None
    kept = []
    for branch in split_top_level(expression):
        m = _LEAD_RE.match(branch)
        lead = m["name"] if m else None
        if lead in _ABSTRACT:
            start = m.start("name")  # type: ignore[union-attr]
            branch = branch[:start] + resource_type + branch[m.end("name") :]  # type: ignore[union-attr]
        elif lead is not None and lead != resource_type and lead in type_names:
            continue
        kept.append(branch)
    return " | ".join(kept) if kept else None

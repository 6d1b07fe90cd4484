"""Top-level element facts per resource type, for _summary and _elements (search.html#summary)."""

from __future__ import annotations

import gzip
import json
from functools import cache
from pathlib import Path

DATA = Path(__file__).parent / "data"


@cache
def top_level_elements() -> dict[str, dict[str, tuple[bool, bool, bool]]]:
    """``{type: {element: (is_summary, is_mandatory, is_choice)}}``; choice names without ``[x]``."""
    with gzip.open(DATA / "elements.json.gz", "rt") as f:
        raw = json.load(f)
    return {t: {name: tuple(flags) for name, flags in els.items()} for t, els in raw.items()}  # type: ignore[misc]

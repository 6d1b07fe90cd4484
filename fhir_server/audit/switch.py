"""``FHIR_AUDIT=off``: the benchmark's switch that stops recording audit rows (bench/bench_audit.py).

It exists to measure what auditing costs and must NEVER be set on a server with real patient
data: every access then goes unrecorded. ``create_app`` logs an error-level banner in every
process when it is off. Process-wide on purpose: it is the setting of the whole server.
"""

from __future__ import annotations

_enabled = True


def configure(enabled: bool) -> None:
    global _enabled
    _enabled = enabled


def enabled() -> bool:
    return _enabled

"""The printable prescription (README "Printable form"): one HTML page (text/html) per prescription —
facility, patient, prescriber, date, prescription number, and per item the medication, dose,
frequency and timing in words (R4 EventTiming and the project's AYUSH timings), route, duration,
quantity, anupana and homeopathic administration. Every value is HTML-escaped.
"""

from __future__ import annotations

from decimal import Decimal
from html import escape
from typing import Any

from fhir_server.workflows.pharmacy.codes import (
    AYUSH_TIMING_WORDS,
    EVENT_TIMING_WORDS,
    EXT_ANUPANA,
    EXT_AYUSH_TIMING,
    EXT_HOMEOPATHIC,
)
from fhir_server.workflows.pharmacy.lock import is_finalized

__all__ = ["PrintContext", "render_prescription"]

_UNITS = {"s": "second", "min": "minute", "h": "hour", "d": "day", "wk": "week", "mo": "month", "a": "year"}
_TIMES = {1: "once", 2: "twice", 3: "three times", 4: "four times"}


class PrintContext:
    def __init__(self, facility: str, patient: dict[str, Any] | None, prescriber: dict[str, Any] | None,
                 medication_names: dict[str, str], number: str | None) -> None:
        self.facility = facility
        self.patient = patient or {}
        self.prescriber = prescriber or {}
        self.medication_names = medication_names  # item id → name
        self.number = number


def _num(value: Any) -> str:
    try:
        d = Decimal(str(value))
    except Exception:  # noqa: BLE001 - anything odd prints as given
        return str(value)
    return format(d.normalize(), "f") if d == d.to_integral_value() else str(value)


def _qty(q: Any) -> str:
    if not isinstance(q, dict) or q.get("value") is None:
        return ""
    unit = q.get("unit") or q.get("code") or ""
    return f"{_num(q['value'])} {unit}".strip()


def _concept(cc: Any) -> str:
    if not isinstance(cc, dict):
        return ""
    return str(cc.get("text") or next((c.get("display") or c.get("code") for c in cc.get("coding") or [] if c.get("display") or c.get("code")), ""))


def _name(resource: dict[str, Any]) -> str:
    for n in resource.get("name") or []:
        if n.get("text"):
            return str(n["text"])
        parts = [*(n.get("prefix") or []), *(n.get("given") or []), n.get("family") or ""]
        joined = " ".join(str(p) for p in parts if p)
        if joined:
            return joined
    return ""


def _period(value: Any, unit: str | None) -> str:
    word = _UNITS.get(unit or "", unit or "")
    return word if _num(value) == "1" else f"{_num(value)} {word}s"


def frequency_words(timing: dict[str, Any]) -> list[str]:
    repeat = timing.get("repeat") or {}
    words: list[str] = []
    if repeat.get("frequency") is not None and repeat.get("period") is not None:
        f = int(repeat["frequency"])
        words.append(f"{_TIMES.get(f, f'{f} times')} every {_period(repeat['period'], repeat.get('periodUnit'))}"
                     .replace("every day", "a day").replace("every week", "a week"))
    if repeat.get("timeOfDay"):
        words.append("at " + ", ".join(str(t)[:5] for t in repeat["timeOfDay"]))
    for ext in repeat.get("extension") or []:
        if ext.get("url") == EXT_AYUSH_TIMING:
            cc = ext.get("valueCodeableConcept") or {}
            code = next((c.get("code") for c in cc.get("coding") or []), None)
            words.append(AYUSH_TIMING_WORDS.get(code or "", _concept(cc)))
    for when in repeat.get("when") or []:
        words.append(EVENT_TIMING_WORDS.get(when, when))
    if timing.get("code"):
        words.append(_concept(timing["code"]))
    return [w for w in words if w]


def duration_words(item: dict[str, Any], timing: dict[str, Any]) -> str:
    repeat = timing.get("repeat") or {}
    bounds = repeat.get("boundsDuration")
    if isinstance(bounds, dict) and bounds.get("value") is not None:
        return f"for {_period(bounds['value'], bounds.get('code') or bounds.get('unit'))}"
    period = repeat.get("boundsPeriod") or {}
    if period.get("start") or period.get("end"):
        return f"from {period.get('start', '…')} to {period.get('end', '…')}"
    supply = (item.get("dispenseRequest") or {}).get("expectedSupplyDuration")
    if isinstance(supply, dict) and supply.get("value") is not None:
        return f"for {_period(supply['value'], supply.get('code') or supply.get('unit'))}"
    return ""


def _homeopathic(ext: dict[str, Any]) -> str:
    parts = {e.get("url"): e for e in ext.get("extension") or []}
    if "text" in parts and parts["text"].get("valueString"):
        return str(parts["text"]["valueString"])
    method = _concept((parts.get("method") or {}).get("valueCodeableConcept")) or "take"
    pills = (parts.get("pills") or {}).get("valueQuantity") or (parts.get("pills") or {}).get("valuePositiveInt")
    vehicle = _concept((parts.get("vehicle") or {}).get("valueCodeableConcept"))
    volume = _qty((parts.get("vehicleVolume") or {}).get("valueQuantity"))
    text = method
    if pills:
        text += f" {_qty(pills) if isinstance(pills, dict) else f'{pills} pills'}"
    if volume or vehicle:
        text += " in " + " ".join(p for p in (volume, vehicle) if p)
    return text


def instructions(dosage: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for ext in dosage.get("extension") or []:
        if ext.get("url") == EXT_ANUPANA:
            out.append("with " + _concept(ext.get("valueCodeableConcept")) + " (anupana)")
        elif ext.get("url") == EXT_HOMEOPATHIC:
            out.append(_homeopathic(ext))
    for cc in dosage.get("additionalInstruction") or []:
        out.append(_concept(cc))
    if dosage.get("patientInstruction"):
        out.append(str(dosage["patientInstruction"]))
    elif dosage.get("text"):
        out.append(str(dosage["text"]))
    return [o for o in out if o]


def _item_row(n: int, item: dict[str, Any], name: str) -> str:
    cells = []
    for dosage in item.get("dosageInstruction") or [{}]:
        timing = dosage.get("timing") or {}
        dose = next((_qty(dr.get("doseQuantity")) or _range(dr.get("doseRange")) for dr in dosage.get("doseAndRate") or []), "")
        cells.append((dose, "; ".join(frequency_words(timing)), _concept(dosage.get("route")),
                      duration_words(item, timing), "; ".join(instructions(dosage))))
    quantity = _qty((item.get("dispenseRequest") or {}).get("quantity"))
    rows = []
    for k, (dose, freq, route, duration, notes) in enumerate(cells):
        first = k == 0
        rows.append(
            "<tr>"
            + (f'<td rowspan="{len(cells)}">{n}</td><td rowspan="{len(cells)}" class="med">{escape(name)}</td>' if first else "")
            + f"<td>{escape(dose)}</td><td>{escape(freq)}</td><td>{escape(route)}</td><td>{escape(duration)}</td>"
            + (f'<td rowspan="{len(cells)}">{escape(quantity)}</td>' if first else "")
            + f"<td>{escape(notes)}</td></tr>"
        )
    return "\n".join(rows)


def _range(r: Any) -> str:
    if not isinstance(r, dict):
        return ""
    return f"{_qty(r.get('low'))} – {_qty(r.get('high'))}"


def render_prescription(items: list[dict[str, Any]], ctx: PrintContext) -> str:
    first = items[0]
    patient = ctx.patient
    ident = next((i.get("value") for i in patient.get("identifier") or [] if i.get("value")), "")
    date = str(first.get("authoredOn") or "")[:10]
    final = all(is_finalized(i) for i in items)
    banner = "" if final else '<p class="draft">DRAFT — not finalized, not valid for dispensing</p>'
    status_note = ", ".join(sorted({str(i.get("status")) for i in items}))
    rows = "\n".join(_item_row(n, item, ctx.medication_names.get(item.get("id", ""), "")) for n, item in enumerate(items, 1))
    notes = [escape(str(n.get("text"))) for i in items for n in i.get("note") or [] if n.get("text")]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Prescription {escape(ctx.number or '')}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #000; }}
header {{ border-bottom: 2px solid #000; margin-bottom: 1em; }}
h1 {{ font-size: 1.4em; margin: 0; }} h2 {{ font-size: 1.1em; }}
table {{ border-collapse: collapse; width: 100%; }} th, td {{ border: 1px solid #555; padding: 4px 6px; text-align: left; vertical-align: top; }}
.med {{ font-weight: bold; }} .draft {{ color: #a00; font-weight: bold; }}
dl {{ display: grid; grid-template-columns: max-content auto; gap: 2px 12px; }} dt {{ font-weight: bold; }}
footer {{ margin-top: 3em; }} @media print {{ body {{ margin: 1cm; }} }}
</style></head>
<body>
<header><h1>{escape(ctx.facility)}</h1><p>Prescription</p></header>
{banner}
<dl>
<dt>Prescription no.</dt><dd>{escape(ctx.number or '')}</dd>
<dt>Date</dt><dd>{escape(date)}</dd>
<dt>Patient</dt><dd>{escape(_name(patient))}{' (' + escape(str(ident)) + ')' if ident else ''}</dd>
<dt>Sex / born</dt><dd>{escape(str(patient.get('gender') or ''))} {escape(str(patient.get('birthDate') or ''))}</dd>
<dt>Prescriber</dt><dd>{escape(_name(ctx.prescriber))}</dd>
<dt>Status</dt><dd>{escape(status_note)}</dd>
</dl>
<h2>Rx</h2>
<table>
<thead><tr><th>#</th><th>Medication</th><th>Dose</th><th>Frequency / timing</th><th>Route</th><th>Duration</th><th>Quantity</th><th>Instructions</th></tr></thead>
<tbody>
{rows}
</tbody></table>
{'<h2>Notes</h2><p>' + '<br>'.join(notes) + '</p>' if notes else ''}
<footer><p>Signature: ______________________ &nbsp; {escape(_name(ctx.prescriber))}</p></footer>
</body></html>
"""

"""The generic engine that applies the tables in ``mappings/`` (shaped like the HL7 v2-to-FHIR IG's
segment, datatype and vocabulary maps; format in hl7_bridge/README.md "Mapping format").

A row: ``source`` (``PID-3`` in a segment map, a component number ``4`` in a datatype map),
``condition`` (``valued X`` / ``not valued X`` / ``X equals V`` / ``X in V1 V2``, joined by `` and ``),
``fhir_path`` (``identifier[+]`` one element per repetition, ``coding[1].code`` 1-based index,
``valueQuantity.value`` nested), ``datatype_map`` (``CX[Identifier]`` another table,
``DTM[dateTime]``/``NM[decimal]``… a primitive, ``fn:name`` a function of ``mappings.functions``),
``vocab_map`` (a table in ``mappings/vocab``) and ``assignment`` (a constant, ``"…"``).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from hl7_bridge.decode import Component, Segment
from mappings import functions as fn
from mappings.functions import MappingError

__all__ = ["Context", "MapRow", "Mapper", "load_map", "vocab"]

_NULL = '""'


@dataclass(frozen=True, slots=True)
class MapRow:
    source: str  # "PID-3" or "4"
    condition: str
    fhir_path: str
    datatype_map: str
    vocab_map: str
    assignment: str


@dataclass(slots=True)
class Context:
    """What the functions of a mapping may need beyond the value: the sender's options."""

    timezone: str = "UTC"
    identifier_systems: dict[str, str] = field(default_factory=dict)
    sender_system: str = "urn:hl7-v2:sender"  # Identifier.system when no assigning authority is sent
    overrides: dict[str, list[dict[str, str]]] = field(default_factory=dict)


def _files(folder: str) -> Any:
    return resources.files("mappings").joinpath(folder)


def _rows(text: str) -> list[MapRow]:
    out = []
    for r in csv.DictReader(text.splitlines()):
        src = (r.get("field") or r.get("component") or "").strip()
        if not src or src.startswith("#"):
            continue
        out.append(MapRow(src, (r.get("condition") or "").strip(), (r.get("fhir_path") or "").strip(),
                          (r.get("datatype_map") or "").strip(), (r.get("vocab_map") or "").strip(),
                          (r.get("assignment") or "").strip()))
    return out


@cache
def load_map(kind: str, name: str) -> tuple[MapRow, ...]:
    """``load_map("segments", "PID_Patient")`` → the rows of mappings/segments/PID_Patient.csv."""
    path = _files(kind).joinpath(f"{name}.csv")
    if not path.is_file():
        raise KeyError(f"no mapping table {kind}/{name}.csv")
    return tuple(_rows(path.read_text(encoding="utf-8")))


@cache
def vocab(name: str) -> dict[str, tuple[str, str, str]]:
    """code → (FHIR code, system, display) from mappings/vocab/<name>.csv."""
    text = _files("vocab").joinpath(f"{name}.csv").read_text(encoding="utf-8")
    return {r["code"]: (r["fhir_code"], r["fhir_system"], r["fhir_display"]) for r in csv.DictReader(text.splitlines())}


@cache
def coding_systems() -> dict[str, str]:
    """v2 coding system names (table 0396: LN, SCT, UCUM, HL70078…) → FHIR system URIs."""
    text = _files("vocab").joinpath("CodingSystem.csv").read_text(encoding="utf-8")
    return {r["code"]: r["fhir_system"] for r in csv.DictReader(text.splitlines())}


def coding_system(name: str) -> str:
    known = coding_systems().get(name) or coding_systems().get(name.upper())
    if known:
        return known
    if re.fullmatch(r"HL7\d{4}", name, re.IGNORECASE):
        return f"http://terminology.hl7.org/CodeSystem/v2-{name[3:]}"
    if re.fullmatch(r"[0-2](\.\d+)+", name):
        return f"urn:oid:{name}"
    if re.fullmatch(r"[a-z][a-z0-9+.-]*:[^\s]+", name, re.IGNORECASE):
        return name
    return f"urn:hl7-v2:coding-system:{re.sub(r'[^A-Za-z0-9._-]', '_', name)}"


# ---- paths --------------------------------------------------------------------------------------
_STEP = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\[(\d+|\+|=)\])?")


@cache
def _steps(path: str) -> tuple[tuple[str, str | None, str, bool], ...]:
    """A FHIR path's steps, parsed once per table row: (key, index, path so far, last)."""
    steps = path.split(".")
    out = []
    for n, step in enumerate(steps):
        m = _STEP.fullmatch(step)
        if m is None:
            raise ValueError(f"bad FHIR path step {step!r} in {path!r}")
        out.append((m[1], m[2], ".".join(steps[: n + 1]), n == len(steps) - 1))
    return tuple(out)


def _set(target: dict[str, Any], path: str, value: Any, appended: dict[str, int]) -> None:
    node: Any = target
    for key, idx, prefix, last in _steps(path):
        if idx is None:
            if last:
                node[key] = value
                return
            node = node.setdefault(key, {})
            continue
        items = node.setdefault(key, [])
        if idx == "+":
            items.append({} if not last else value)
            appended[prefix] = len(items) - 1
            pos = len(items) - 1
        elif idx == "=":
            pos = appended.get(prefix.replace("[=]", "[+]"), len(items) - 1)
            if pos < 0:
                items.append({})
                pos = 0
        else:
            pos = int(idx) - 1
            while len(items) <= pos:
                items.append(None)
        if last:
            items[pos] = value
            return
        if items[pos] is None:
            items[pos] = {}
        node = items[pos]


def _compact(value: Any) -> Any:
    """Drop empty objects, empty lists and list holes (``coding[2]`` set without ``coding[1]``)."""
    if isinstance(value, dict):
        out = {k: c for k, v in value.items() if (c := _compact(v)) not in (None, {}, [], "")}
        return out
    if isinstance(value, list):
        return [c for v in value if (c := _compact(v)) not in (None, {}, [], "")]
    return value


# ---- the engine ---------------------------------------------------------------------------------
Getter = Callable[[str], list[Component]]


class Mapper:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.segment_now: Segment | None = None  # the segment being mapped (functions may read its other fields)
        self._overridden: dict[tuple[str, str], tuple[MapRow, ...]] = {}  # the sender's overrides, parsed once

    def _table(self, kind: str, name: str) -> tuple[MapRow, ...]:
        rows = load_map(kind, name)
        over = self.ctx.overrides.get(name)
        if not over:
            return rows
        done = self._overridden.get((kind, name))
        if done is None:
            replaced = {o.get("field") or o.get("component") for o in over}
            extra = tuple(r for r in _rows(_to_csv(over)) if r.fhir_path)
            done = self._overridden[(kind, name)] = tuple(r for r in rows if r.source not in replaced) + extra
        return done

    # segment map: PID → Patient
    def segment(self, seg: Segment, name: str, into: dict[str, Any] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = into if into is not None else {}

        def get(src: str) -> list[Component]:
            if src == "*":
                return [Component(seg.name, seg.enc)]
            return seg.reps(int(src.split("-", 1)[1]))

        outer, self.segment_now = self.segment_now, seg
        try:
            self._apply(self._table("segments", name), get, out, where=seg.name)
        except MappingError as exc:
            if exc.position is None:
                exc.position = seg.index
            raise
        finally:
            self.segment_now = outer
        return _compact(out)

    # datatype map: CX → Identifier
    def datatype(self, value: Component, name: str) -> dict[str, Any]:
        out: dict[str, Any] = {}

        def get(src: str) -> list[Component]:
            if src == "*":
                return [value]
            n = int(src)
            parts = value.raw.split(value.enc.component)
            raw = parts[n - 1] if n <= len(parts) else ""
            return [Component(raw.replace(value.enc.subcomponent, value.enc.component), value.enc)] if raw else []

        self._apply(self._table("datatypes", name), get, out, where=name)
        return _compact(out)

    def _apply(self, rows: tuple[MapRow, ...], get: Getter, out: dict[str, Any], where: str) -> None:
        appended: dict[str, int] = {}
        for row in rows:
            if not row.fhir_path:
                continue
            if row.condition and not self._holds(row.condition, get):
                continue
            values = [v for v in get(row.source) if v.raw and v.raw != _NULL]
            if "[+]" not in row.fhir_path:
                values = values[:1]
            if row.assignment:
                if values or row.source == "*":
                    _set(out, row.fhir_path, row.assignment.strip('"'), appended)
                continue
            if row.datatype_map == "fn:lines":  # every repetition, one per line (TX/FT text)
                if values:
                    _set(out, row.fhir_path, "\n".join(v.text for v in values), appended)
                continue
            for v in values:
                try:
                    mapped = self._convert(v, row)
                except MappingError as exc:
                    loc = row.source if "-" in row.source else exc.location or f"{where}.{row.source}"
                    raise MappingError(exc.reason, loc, exc.code) from None
                if mapped not in (None, "", {}, []):
                    _set(out, row.fhir_path, mapped, appended)

    def _convert(self, v: Component, row: MapRow) -> Any:
        dt = row.datatype_map
        if not dt:
            value: Any = v.c(1) if v.enc.component in v.raw else v.text
        elif dt.startswith("fn:"):
            value = FUNCTIONS[dt[3:]](self, v)
        elif dt in PRIMITIVES:
            text = v.c(1)
            value = PRIMITIVES[dt](text, self.ctx.timezone) if text else None
        else:
            value = self.datatype(v, _datatype_table(dt))
        if row.vocab_map and value not in (None, ""):
            value = self._vocab(row.vocab_map, value, v)
        return value

    def _vocab(self, name: str, value: Any, v: Component) -> Any:
        table = vocab(name)
        if isinstance(value, str):
            hit = table.get(value)
            return hit[0] if hit else None
        if isinstance(value, dict) and "coding" in value:  # CodeableConcept: the mapped coding first
            code = value["coding"][0].get("code") if value["coding"] else None
            hit = table.get(code or "")
            if hit:
                first = {"system": hit[1], "code": hit[0], **({"display": hit[2]} if hit[2] else {})}
                rest = [c for c in value["coding"][1:] if (c.get("system"), c.get("code")) != (hit[1], hit[0])]
                if value["coding"][0].get("system") not in (None, hit[1]):
                    rest.insert(0, value["coding"][0])  # the sender's own coding, kept beside the standard one
                return {**value, "coding": [first, *rest]}
            return value
        if isinstance(value, dict) and "code" in value:  # Coding
            hit = table.get(value["code"])
            return {"system": hit[1], "code": hit[0], **({"display": hit[2]} if hit[2] else {})} if hit else value
        return value

    def _holds(self, condition: str, get: Getter) -> bool:
        for op, src, arg in _clauses(condition):
            if op == "not valued":
                ok = not _valued(get(src))
            elif op == "valued":
                ok = _valued(get(src))
            elif op == "equals":
                ok = _first(get(src)) == arg
            else:
                ok = _first(get(src)) in arg
            if not ok:
                return False
        return True


@cache
def _clauses(condition: str) -> tuple[tuple[str, str, Any], ...]:
    """A row's condition, parsed once: (operator, source, operand) per clause."""
    out: list[tuple[str, str, Any]] = []
    for clause in condition.split(" and "):
        words = clause.split()
        if words[:2] == ["not", "valued"]:
            out.append(("not valued", words[2], None))
        elif words[0] == "valued":
            out.append(("valued", words[1], None))
        elif len(words) >= 3 and words[1] == "equals":
            out.append(("equals", words[0], words[2].strip('"')))
        elif len(words) >= 3 and words[1] == "in":
            out.append(("in", words[0], frozenset(w.strip('",') for w in words[2:])))
        else:
            raise ValueError(f"unknown condition {clause!r} (equals, in, valued, not valued)")
    return tuple(out)


@cache
def _datatype_table(dt: str) -> str:
    """``CX[Identifier]`` → the datatype map's table name ``CX_Identifier``."""
    m = re.fullmatch(r"([A-Z]{2,3})\[([A-Za-z-]+)\]", dt)
    if m is None:
        raise ValueError(f"unknown datatype map {dt!r}")
    return f"{m[1]}_{m[2]}"


def _valued(values: list[Component]) -> bool:
    return any(v and v.raw != _NULL for v in values)


def _first(values: list[Component]) -> str:
    return values[0].c(1) if values else ""


def _to_csv(rows: list[dict[str, str]]) -> str:
    cols = ["field", "component", "condition", "fhir_path", "datatype_map", "vocab_map", "assignment"]
    lines = [",".join(cols)]
    for r in rows:
        lines.append(",".join('"' + str(r.get(c, "")).replace('"', '""') + '"' for c in cols))
    return "\n".join(lines)


# ---- primitives and functions -------------------------------------------------------------------
PRIMITIVES: dict[str, Callable[[str, str], Any]] = {
    "DTM[dateTime]": fn.dtm_to_datetime,
    "TS[dateTime]": lambda v, tz: fn.dtm_to_datetime(v.split("^")[0], tz),
    "DTM[instant]": fn.dtm_to_instant,
    "DT[date]": fn.dt_to_date,
    "DTM[date]": fn.dt_to_date,
    "NM[decimal]": lambda v, tz: fn.decimal_of(v),
    "NM[positiveInt]": lambda v, tz: int(fn.decimal_of(v)),
    "ID[boolean]": lambda v, tz: {"Y": True, "N": False}.get(v.upper()),
}


def _authority(m: Mapper, v: Component) -> str:
    """HD (as a component whose subcomponents were lifted) → Identifier.system."""
    return fn.authority_system(v.c(1), v.c(2), v.c(3), m.ctx.identifier_systems, m.ctx.sender_system)


def _cx_system(m: Mapper, v: Component) -> str:
    """CX.4 (assigning authority), else CX.6 (assigning facility) → Identifier.system."""
    hd = v.sub(4) if v.sub(4) else v.sub(6)
    return fn.authority_system(hd.c(1), hd.c(2), hd.c(3), m.ctx.identifier_systems, m.ctx.sender_system)


def _coding_system(m: Mapper, v: Component) -> str:
    return coding_system(v.c(1))


def _xcn_reference(m: Mapper, v: Component) -> dict[str, Any]:
    """XCN → a logical reference (identifier + display); the handler turns it into a Practitioner."""
    ident = {"value": v.c(1)}
    hd = v.sub(9)
    ident["system"] = fn.authority_system(hd.c(1), hd.c(2), hd.c(3), m.ctx.identifier_systems, m.ctx.sender_system + ":practitioner")
    name = " ".join(p for p in (v.c(6), v.c(3), v.c(4), v.c(2)) if p)
    return {"identifier": ident if ident["value"] else None, "display": name or None}


def _quantity_unit(m: Mapper, v: Component) -> dict[str, Any]:
    """OBX-6 (CWE units) → the unit part of a Quantity: UCUM system when the code is UCUM."""
    code, text, system = v.c(1), v.c(2), v.c(3)
    out: dict[str, Any] = {"unit": text or code}
    if code and system:  # a coded unit only when the sender names its system (UCUM, or a local one)
        out["code"] = code
        out["system"] = coding_system(system)
    return out


def _ei_system(m: Mapper, v: Component) -> str:
    """EI.2 namespace, EI.3 universal id, EI.4 type (the HD spread over EI's components)."""
    return fn.authority_system(v.c(2), v.c(3), v.c(4), m.ctx.identifier_systems, m.ctx.sender_system)


def ei_identifier(m: Mapper, v: Component) -> dict[str, Any] | None:
    return m.datatype(v, "EI_Identifier") or None


def _eip_identifier(m: Mapper, v: Component) -> dict[str, Any] | None:
    """EIP → the filler-assigned EI (component 2), else the placer-assigned (component 1)."""
    for n in (2, 1):
        part = v.sub(n)
        if part:
            return ei_identifier(m, part)
    return None


def _identifier_type(m: Mapper, v: Component) -> dict[str, Any] | None:
    from hl7_bridge.mapper import vocab as _vocab

    code = v.c(1)
    hit = _vocab("IdentifierType").get(code)
    if hit:
        return {"coding": [{"system": hit[1], "code": hit[0], **({"display": hit[2]} if hit[2] else {})}]}
    return {"text": code} if code else None


def _xtn_value(m: Mapper, v: Component) -> str | None:
    if v.c(4):
        return v.c(4)
    if v.c(12):
        return v.c(12)
    if v.c(1):
        return v.c(1)
    local = " ".join(p for p in (f"+{v.c(5)}" if v.c(5) else "", f"({v.c(6)})" if v.c(6) else "", v.c(7)) if p)
    return local or None


def _pl_parts(v: Component) -> list[str]:
    facility = v.sub(4).c(1)
    return [p for p in (facility, v.c(1), v.c(2), v.c(3)) if p]


def _pl_key(m: Mapper, v: Component) -> str | None:
    return "/".join(_pl_parts(v)) or None


def _pl_name(m: Mapper, v: Component) -> str | None:
    parts = [p for p in (v.c(1), v.c(2), v.c(3)) if p]
    return " ".join(parts) or v.sub(4).c(1) or None


def _reference_range(m: Mapper, v: Component) -> dict[str, Any] | None:
    seg = m.segment_now
    unit = _quantity_unit(m, seg.f(6)) if seg is not None and seg.valued(6) else None
    return fn.reference_range(v.text, unit) if v.text else None


def _sn_quantity(m: Mapper, v: Component) -> dict[str, Any] | None:
    """SN: [comparator]^number — a Quantity (with comparator) when it is a plain number; SN ranges
    and ratios (``1^-^5``, ``1^:^128``) are kept as text in valueString by the handler."""
    comparator, number, sep = v.c(1), v.c(2), v.c(3)
    if sep or not number:
        return None
    seg = m.segment_now
    unit = _quantity_unit(m, seg.f(6)) if seg is not None and seg.valued(6) else {}
    q: dict[str, Any] = {"value": fn.decimal_of(number), **(unit or {})}
    if comparator in ("<", ">", "<=", ">="):
        q["comparator"] = comparator
    return q


def _hl7_time(m: Mapper, v: Component) -> str | None:
    t = v.c(1).split("+")[0].split("-")[0]
    if not re.fullmatch(r"\d{2}(\d{2}(\d{2}(\.\d{1,4})?)?)?", t):
        raise MappingError(f"'{v.c(1)}' is not an HL7 time (HH[MM[SS[.SSSS]]])")
    return f"{t[0:2]}:{t[2:4] or '00'}:{t[4:6] or '00'}{t[6:]}"


FUNCTIONS: dict[str, Callable[[Mapper, Component], Any]] = {
    "authority_system": _authority,
    "ei_system": _ei_system,
    "eip_identifier": _eip_identifier,
    "identifier_type": _identifier_type,
    "xtn_value": _xtn_value,
    "pl_key": _pl_key,
    "pl_name": _pl_name,
    "reference_range": _reference_range,
    "sn_quantity": _sn_quantity,
    "hl7_time": _hl7_time,
    "cx_system": _cx_system,
    "xcn_system": lambda m, v: fn.authority_system(
        v.sub(9).c(1), v.sub(9).c(2), v.sub(9).c(3), m.ctx.identifier_systems, m.ctx.sender_system + ":practitioner"
    ),
    "coding_system": _coding_system,
    "xcn_reference": _xcn_reference,
    "quantity_unit": _quantity_unit,
    "text": lambda m, v: v.text,
}

#!/usr/bin/env python
"""Validation speed and correctness: ours vs fhir.resources (pydantic, R4B) vs fhirkit-rs (Rust, R4).

Runs every validator on the same parsed official R4 examples in one process and prints, per validator:
mean µs per resource over all examples, µs for Patient-example, examples falsely rejected, and how
many of the negative cases it catches. Also the load time of our Validator and the cost of one
FHIRPath invariant with fhirpathpy (why invariants are not evaluated).

    /work/venv/bin/pip install fhir.resources==8.3.0 fhirkit-rs fhirpathpy   # alternatives, bench only
    /work/venv/bin/python bench/bench_validation.py [--examples DIR] [--passes N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OBS = {"resourceType": "Observation", "status": "final", "code": {"text": "Haemoglobin"}}
PAT = {"resourceType": "Patient", "id": "p1"}

# (name, resource, expected issue code, expected expression) — from the R4 spec pages
NEGATIVE: list[tuple[str, dict, str, str]] = [
    ("impossible date 2023-02-30", {**PAT, "birthDate": "2023-02-30"}, "value", "Patient.birthDate"),
    ("unknown element", {**PAT, "favouriteColour": "blue"}, "structure", "Patient.favouriteColour"),
    ("wrong Patient.gender code", {**PAT, "gender": "robot"}, "code-invalid", "Patient.gender"),
    ("Observation without status", {k: v for k, v in OBS.items() if k != "status"}, "required", "Observation.status"),
    (
        "malformed reference Patient/",
        {**OBS, "subject": {"reference": "Patient/"}},
        "value",
        "Observation.subject.reference",
    ),
    (
        "reference to unknown type Foo/1",
        {**OBS, "subject": {"reference": "Foo/123"}},
        "value",
        "Observation.subject.reference",
    ),
    (
        "reference target type",
        {**OBS, "subject": {"reference": "Medication/1"}},
        "invalid",
        "Observation.subject.reference",
    ),
    (
        "instant without timezone",
        {**PAT, "meta": {"lastUpdated": "2020-01-01T10:00:00"}},
        "value",
        "Patient.meta.lastUpdated",
    ),
    ("string where boolean expected", {**PAT, "active": "true"}, "value", "Patient.active"),
    ("empty array", {**PAT, "name": []}, "structure", "Patient.name"),
    ("extension without url", {**PAT, "extension": [{"valueString": "x"}]}, "required", "Patient.extension[0].url"),
    (
        "contained with contained",
        {
            **PAT,
            "managingOrganization": {"reference": "#o"},
            "contained": [
                {"resourceType": "Organization", "id": "o", "contained": [{"resourceType": "Organization", "id": "o2"}]}
            ],
        },
        "invariant",
        "Patient.contained[0].contained",
    ),
    ("invalid choice type valueFoo", {**OBS, "valueFoo": 1}, "structure", "Observation.valueFoo"),
    ("decimal as string", {**OBS, "valueQuantity": {"value": "1.0"}}, "value", "Observation.valueQuantity.value"),
    ("single value as array", {**PAT, "gender": ["male"]}, "structure", "Patient.gender"),
    (
        "ext-1 value and extensions",
        {
            **PAT,
            "extension": [{"url": "http://x", "valueString": "a", "extension": [{"url": "b", "valueString": "c"}]}],
        },
        "invariant",
        "Patient.extension[0]",
    ),
    (
        "unresolved #local reference",
        {**PAT, "managingOrganization": {"reference": "#nope"}},
        "invariant",
        "Patient.managingOrganization.reference",
    ),
    ("bad id", {**PAT, "id": "a_b"}, "value", "Patient.id"),
    ("integer out of 32-bit range", {**PAT, "multipleBirthInteger": 2**31}, "value", "Patient.multipleBirthInteger"),
    (
        "bundle entry bad code",
        {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {**PAT, "gender": "robot"}}]},
        "code-invalid",
        "Bundle.entry[0].resource.gender",
    ),
]


def find_examples(arg: str | None) -> Path:
    for cand in (arg, ROOT.parent / "shared" / "data" / "fhir-r4" / "examples", "/work/shared/data/fhir-r4/examples"):
        if cand and Path(cand).is_dir():
            return Path(cand)
    sys.exit("official examples not found; pass --examples DIR")


def timed(fn: Callable[[Any], Any], resources: list[dict], passes: int) -> float:
    best = float("inf")
    for _ in range(passes):
        t = time.perf_counter()
        for r in resources:
            fn(r)
        best = min(best, (time.perf_counter() - t) / len(resources))
    return best * 1e6


def ours() -> tuple[str, Callable[[dict], bool], Callable[[dict], Any]]:
    from fhir_server.validation import Validator

    v = Validator()

    def rejects(r: dict) -> bool:
        return any(i.severity in ("error", "fatal") for i in v.validate(r))

    return "ours (fhir_server.validation)", rejects, v.validate


def fhir_resources() -> tuple[str, Callable[[dict], bool], Callable[[dict], Any]] | None:
    try:
        from fhir.resources.R4B import get_fhir_model_class  # 8.x ships R4B (4.3.0) and STU3, not R4
    except ImportError:
        return None

    def run(r: dict) -> Any:
        return get_fhir_model_class(r["resourceType"]).model_validate(r)

    def rejects(r: dict) -> bool:
        try:
            run(r)
            return False
        except Exception:  # noqa: BLE001 - pydantic ValidationError, ValueError for unknown types...
            return True

    def quiet(r: dict) -> None:
        rejects(r)

    return "fhir.resources 8.3.0 (R4B models)", rejects, quiet


def fhirkit_rs() -> tuple[str, Callable[[dict], bool], Callable[[dict], Any]] | None:
    try:
        import fhirkit
    except ImportError:
        return None

    def rejects(r: dict) -> bool:
        try:
            return any(i.severity == "error" for i in fhirkit.validate(r))
        except Exception:  # noqa: BLE001
            return True

    return f"fhirkit-rs {fhirkit.__version__} (Rust, R4)", rejects, rejects


def load_time() -> float:
    """Fresh interpreter: import + read packaged data + compile (what a server start pays)."""
    code = (
        "import time; t=time.perf_counter(); from fhir_server.validation import Validator; Validator(); "
        "print(time.perf_counter()-t)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def fhirpath_cost(patient: dict) -> float | None:
    try:
        from fhirpathpy import compile as fp_compile
    except ImportError:
        return None
    f = fp_compile("contact.all(name.exists() or telecom.exists() or address.exists() or organization.exists())")
    t = time.perf_counter()
    for _ in range(200):
        f(patient)
    return (time.perf_counter() - t) / 200 * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", default=None)
    ap.add_argument("--passes", type=int, default=5)
    args = ap.parse_args()
    d = find_examples(args.examples)
    files = sorted(d.glob("*.json"))
    resources = [json.loads(f.read_text(encoding="utf-8")) for f in files]
    patient = json.loads((d / "Patient-example.json").read_text(encoding="utf-8"))
    print(f"{len(resources)} official examples from {d}")
    print(f"our Validator load time (fresh process, import+read+compile): {load_time() * 1000:.0f} ms")

    rows = []
    for make in (ours, fhir_resources, fhirkit_rs):
        got = make()
        if got is None:
            print(f"{make.__name__}: not installed, skipped")
            continue
        name, rejects, run = got
        for r in resources:  # warm-up: lazy imports / model building
            run(r)
        mean = timed(run, resources, args.passes)
        pat = timed(run, [patient] * 200, args.passes)
        false_rej = [f.name for f, r in zip(files, resources) if rejects(r)]
        missed = [label for label, res, _, _ in NEGATIVE if not rejects(res)]
        rows.append((name, mean, pat, len(false_rej), len(NEGATIVE) - len(missed), false_rej, missed))

    from fhir_server.validation import validate_resource

    exact = 0
    for label, res, code, expr in NEGATIVE:
        ok = any(i.code == code and i.expression == expr for i in validate_resource(res))
        exact += ok
        if not ok:
            print(f"  ours: {label}: expected {code} at {expr}")

    print()
    print(
        f"| validator | mean µs/resource ({len(resources)} examples) | Patient-example µs | examples rejected "
        f"| negative cases caught (of {len(NEGATIVE)}) |"
    )
    print("|---|---:|---:|---:|---:|")
    for name, mean, pat, nfalse, caught, _, _ in rows:
        print(f"| {name} | {mean:.0f} | {pat:.0f} | {nfalse} | {caught} |")
    print(f"\nours: {exact}/{len(NEGATIVE)} negative cases reported with the expected code and expression")
    for name, _, _, _, _, false_rej, missed in rows:
        print(f"{name}: rejected examples ({len(false_rej)}): {', '.join(false_rej) or 'none'}")
        print(f"{name}: missed negative cases: {', '.join(missed) or 'none'}")
    cost = fhirpath_cost(patient)
    if cost is not None:
        print(f"\nfhirpathpy: one Patient invariant (pat-1) on Patient-example: {cost:.0f} µs")


if __name__ == "__main__":
    main()

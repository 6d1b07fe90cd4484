#!/usr/bin/env python
"""Pharmacy throughput (fhir_server/workflows/pharmacy): ``MedicationRequest/$finalize`` and
``MedicationRequest/[id]/$dispense`` over HTTP, each against a plain write of the same resource type in
the same run, server and database; then a check that no request was dispensed beyond its quantity.

    /work/venv/bin/python bench/bench_pharmacy.py [--prescriptions 200] [--items 2] [--concurrency 16] [--workers 2]

Set-up: a fresh database (DATABASE_URL as admin, or an embedded PostgreSQL in a temp dir),
``fhir-server serve --dev --workers N`` (access log off), one facility, doctor (PractitionerRole doctor),
``--prescriptions`` patients each with an encounter, one AllergyIntolerance (not matching) and a draft
prescription of ``--items`` MedicationRequests (10 tablets each). Scenarios:

* ``plain update``: ``PUT MedicationRequest`` of other draft items (a note changed) — the baseline of a
  MedicationRequest write without the workflow;
* ``$finalize``: one per prescription (completeness, prescribing right, allergy screening, every item
  draft → active, one transaction); finalizes/s and items/s;
* ``plain create``: ``POST MedicationDispense`` without a prescription (the hook has nothing to do) —
  the baseline of a dispense write;
* ``$dispense``: two per item (5 + 5 tablets: a partial, then the completing one that also updates the
  request), items shuffled so parallel requests mostly touch different items;
* ``contended $dispense``: 16 parallel ``$dispense`` of 1 tablet against ONE request of 10: 10 succeed.

Writes bench/results/pharmacy-<ts>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h

RX = "https://fhir-server.example.org/fhir/prescription-number"


def item(p: int, group: str, note: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "MedicationRequest", "status": "draft", "intent": "order",
        "groupIdentifier": {"system": RX, "value": group},
        "medicationCodeableConcept": {"text": f"Triphala churna {p}"},
        "subject": {"reference": f"Patient/p{p}"}, "encounter": {"reference": f"Encounter/e{p}"},
        "requester": {"reference": "Practitioner/doc"}, "authoredOn": "2026-11-29",
        "dosageInstruction": [{"timing": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "d", "when": ["PC"],
                                                     "boundsDuration": {"value": 5, "unit": "days", "system": "http://unitsofmeasure.org", "code": "d"}}},
                               "doseAndRate": [{"doseQuantity": {"value": 1, "unit": "tablet"}}]}],
        "dispenseRequest": {"quantity": {"value": 10, "unit": "tablet"}},
    }
    if note:
        body["note"] = [{"text": note}]
    return body


def seed(base: str, prescriptions: int, items: int) -> tuple[list[str], list[str]]:
    """(prescription numbers, ids of the baseline draft items)."""
    resources: list[dict[str, Any]] = [
        {"resourceType": "Organization", "id": "org", "name": "Bench Hospital"},
        {"resourceType": "Practitioner", "id": "doc", "name": [{"family": "Vaidya"}]},
        {"resourceType": "PractitionerRole", "id": "doc-role", "practitioner": {"reference": "Practitioner/doc"},
         "code": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/practitioner-role", "code": "doctor"}]}]},
    ]
    groups, baseline = [], []
    for p in range(prescriptions):
        resources += [
            {"resourceType": "Patient", "id": f"p{p}", "name": [{"family": f"P{p}"}]},
            {"resourceType": "Encounter", "id": f"e{p}", "status": "in-progress", "class": {"code": "AMB"},
             "subject": {"reference": f"Patient/p{p}"}, "serviceProvider": {"reference": "Organization/org"}},
            {"resourceType": "AllergyIntolerance", "id": f"a{p}", "patient": {"reference": f"Patient/p{p}"}, "code": {"text": "Peanut"}},
        ]
        group = f"rx-{p}"
        groups.append(group)
        for i in range(items):
            resources.append({**item(p, group), "id": f"mr{p}-{i}"})
        resources.append({**item(p, f"base-{p}"), "id": f"base{p}"})
        baseline.append(f"base{p}")
    with httpx.Client(base_url=base, timeout=300) as c:
        for k in range(0, len(resources), 200):
            entries = [{"resource": r, "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
                       for r in resources[k:k + 200]]
            c.post("", json={"resourceType": "Bundle", "type": "batch", "entry": entries},
                   headers={"Prefer": "return=minimal"}).raise_for_status()
    return groups, baseline


def line(name: str, r: dict[str, Any], unit: str) -> None:
    print(f"{name:22}: {r['ok_per_s']:8.1f} {unit}/s   p50 {r['p50_ms']} ms  p99 {r['p99_ms']} ms  {r['codes']}")


def dispense_body(quantity: int) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": [{"name": "quantity", "valueQuantity": {"value": quantity, "unit": "tablet"}}]}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prescriptions", type=int, default=200)
    parser.add_argument("--items", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    h.install_signal_handlers()
    rng = random.Random(8)
    n, k, conc = args.prescriptions, args.items, args.concurrency
    with h.temp_dir("fhir-bench-pharmacy-") as tmp, h.postgres(tmp) as (admin, _), \
            h.fresh_database(admin, "pharmacy") as url, \
            h.fhir_server(url, args.workers, tmp / "server.log", FHIR_ACCESS_LOG="false") as srv:
        srv.start("/fhir/metadata")
        base = f"http://{h.HOST}:{srv.port}/fhir"
        groups, baseline = seed(base, n, k)
        print(f"seeded {n} prescriptions x {k} items (+{n} baseline drafts); {conc} connections, {args.workers} workers")
        results: dict[str, Any] = {}
        results["plain_update"] = asyncio.run(h.post_all(base, [
            ("PUT", f"/MedicationRequest/{b}", {**item(i, f"base-{i}", note="changed"), "id": b}) for i, b in enumerate(baseline)], conc))
        line("plain update (MR)", results["plain_update"], "updates")
        results["finalize"] = asyncio.run(h.post_all(base, [
            ("POST", "/MedicationRequest/$finalize", {"resourceType": "Parameters", "parameter": [{"name": "prescription", "valueString": f"{RX}|{g}"}]})
            for g in groups], conc))
        line("$finalize", results["finalize"], "finalizes")
        print(f"{'':22}  = {results['finalize']['ok_per_s'] * k:8.1f} items/s")
        otc = {"resourceType": "MedicationDispense", "status": "completed", "medicationCodeableConcept": {"text": "ORS"},
               "quantity": {"value": 5, "unit": "tablet"}}
        results["plain_dispense"] = asyncio.run(h.post_all(base, [("POST", "/MedicationDispense", otc)] * (2 * n * k), conc))
        line("plain create (MD)", results["plain_dispense"], "dispenses")
        ids = [f"mr{p}-{i}" for p in range(n) for i in range(k)]
        rng.shuffle(ids)
        calls = [("POST", f"/MedicationRequest/{rid}/$dispense", dispense_body(5)) for rid in ids]
        rng.shuffle(ids)
        calls += [("POST", f"/MedicationRequest/{rid}/$dispense", dispense_body(5)) for rid in ids]
        results["dispense"] = asyncio.run(h.post_all(base, calls, conc))
        line("$dispense", results["dispense"], "dispenses")
        # a fresh, finalized hot request: base0 is a draft of its own group
        with httpx.Client(base_url=base, timeout=60) as c:
            c.post("/MedicationRequest/$finalize", json={"resourceType": "Parameters", "parameter": [
                {"name": "prescription", "valueString": f"{RX}|base-0"}]}).raise_for_status()
        hot = "base0"
        results["contended_dispense"] = asyncio.run(h.post_all(base, [("POST", f"/MedicationRequest/{hot}/$dispense", dispense_body(1))] * 16, 16))
        line("contended $dispense", results["contended_dispense"], "dispenses")
        over = h.query(url, """
            SELECT q.id, q.prescribed, coalesce(sum((d.content->'quantity'->>'value')::numeric), 0) AS dispensed
            FROM (SELECT id, (content->'dispenseRequest'->'quantity'->>'value')::numeric AS prescribed FROM resource
                  WHERE resource_type = 'MedicationRequest' AND NOT deleted) q
            LEFT JOIN resource d ON d.resource_type = 'MedicationDispense' AND NOT d.deleted AND d.content->>'status' = 'completed'
                 AND d.content->'authorizingPrescription'->0->>'reference' = 'MedicationRequest/' || q.id
            GROUP BY q.id, q.prescribed HAVING coalesce(sum((d.content->'quantity'->>'value')::numeric), 0) > q.prescribed""")
        completed = h.query(url, "SELECT count(*) FROM resource WHERE resource_type = 'MedicationRequest' AND content->>'status' = 'completed'")[0][0]
        ok = (not over and completed == n * k + 1 and results["dispense"]["codes"].get(200) == 2 * n * k
              and results["contended_dispense"]["codes"].get(200) == 10)
        print(f"check                 : {completed} requests completed (expect {n * k + 1}); over-dispensed: {len(over)} -> {'OK' if ok else 'FAILED'}")
        out = {"prescriptions": n, "items": k, "concurrency": conc, "workers": args.workers, **results,
               "over_dispensed": len(over), "completed": completed, "ok": ok}
        print(f"wrote {h.write_result('pharmacy', out)}")
        return 0 if ok else 1


if __name__ == "__main__":
    h.run_main(main)

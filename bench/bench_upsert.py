#!/usr/bin/env python
"""Upsert by business identifier: conditional update ``PUT Patient?identifier=system|value`` (an
existing match) against a plain ``PUT Patient/{id}``, alone and inside transaction/batch Bundles,
in one run against the same server and database.

    /work/venv/bin/python bench/bench_upsert.py [--seconds 8] [--rounds 2] [--workers 2]

Set-up: a fresh database, ``fhir-server serve --dev --workers 2`` (access log off), 640 realistic
Patients (identifier ``urn:oid:2.16.840.1.113883.19.5|MRN-n``). Each load-generator connection
updates its own Patients in turn (no two connections write the same one: a sync job's shape), so
the figures measure the interaction, not lock waits. Scenarios, plain and conditional alternately
in every round: single PUTs at 1 and 16 connections; transaction and batch Bundles of 10 PUT
entries at 4 connections. Reported: updates/s (medians over the rounds), p50/p99, the server's and
PostgreSQL's CPU per update, the load average, and the conditional/plain ratio.
Writes bench/results/upsert-<ts>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import statistics
import sys
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h
import loadgen
from workloads import MRN_SYSTEM, BundleUpserts, Upserts, realistic_patient

PATIENTS = 640
BUNDLE_SIZE = 10
SCENARIOS = [  # (name, connections, bundle type or None)
    ("single", 1, None),
    ("single", 16, None),
    ("transaction", 4, "transaction"),
    ("batch", 4, "batch"),
]


def seed_patients(port: int, n: int) -> None:
    rng = random.Random(11)
    with httpx.Client(base_url=f"http://{h.HOST}:{port}", timeout=120) as client:
        for start in range(0, n, 100):
            entries = [{"resource": realistic_patient(rng, serial), "request": {"method": "POST", "url": "Patient"}}
                       for serial in range(start + 1, min(n, start + 100) + 1)]
            r = client.post("/fhir", json={"resourceType": "Bundle", "type": "transaction", "entry": entries},
                            headers={"Prefer": "return=minimal"})
            r.raise_for_status()


def measure(srv: h.Proc, postmaster: int | None, factory: Any, connections: int, args: argparse.Namespace,
            per_request: int) -> dict[str, Any]:
    meter = h.CpuMeter({"server": srv.pids, "postgres": lambda: h.postgres_pids(postmaster)})
    cores: dict[str, float] = {}

    def on_mark(name: str) -> None:
        if name == "measure-start":
            meter.start()
        elif name == "measure-end":
            cores.update(meter.stop())

    load0 = os.getloadavg()[0]
    r = loadgen.run_in_subprocess(h.HOST, srv.port, factory, on_mark=on_mark, connections=connections,
                                  duration=args.seconds, max_requests=1_000_000, warmup=args.warmup)
    ok = r["ok_rps"] * per_request
    bad = {k: v for k, v in r["status"].items() if not k.split()[1].startswith("2")}
    return {
        "connections": connections, "updates_per_s": round(ok, 1), "requests_per_s": r["ok_rps"],
        "p50_ms": r["latency_ms"]["p50"], "p99_ms": r["latency_ms"]["p99"], "status": r["status"], "errors": r["errors"],
        "failed": sum(bad.values()) + sum(r["errors"].values()), "cores": cores,
        "cpu_ms_per_update_server": round(cores.get("server", 0) * 1000 / ok, 3) if ok else None,
        "cpu_ms_per_update_postgres": round(cores.get("postgres", 0) * 1000 / ok, 3) if ok else None,
        "loadavg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=8, help="measured seconds per scenario (default 8)")
    p.add_argument("--warmup", type=float, default=1.5, help="unmeasured seconds per scenario (default 1.5)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of every scenario, plain and conditional (default 2)")
    p.add_argument("--workers", type=int, default=2, help="server processes (default 2, as fhir-server serve)")
    args = p.parse_args(argv)
    h.install_signal_handlers()
    started = dt.datetime.now()
    print(f"load average {os.getloadavg()}", flush=True)
    runs: list[dict[str, Any]] = []
    with h.temp_dir("fhir-bench-upsert-") as tmp, h.postgres(tmp) as (admin_url, postmaster):
        pg_version = h.query(admin_url, "SHOW server_version")[0][0]
        with h.fresh_database(admin_url, "upsert") as db, h.fhir_server(
            db, args.workers, tmp / "server.log", FHIR_ACCESS_LOG="false"
        ) as srv:
            srv.start("/fhir/metadata")
            seed_patients(srv.port, PATIENTS)
            h.execute(db, "ANALYZE")
            patients = [(str(r[0]), str(r[1])) for r in h.query(
                db, "SELECT id, content->'identifier'->0->>'value' FROM resource WHERE resource_type = 'Patient' "
                "AND content->'identifier'->0->>'system' = %s ORDER BY 2", (MRN_SYSTEM,))]
            assert len(patients) == PATIENTS, len(patients)
            for rnd in range(args.rounds):
                for name, conns, btype in SCENARIOS:
                    order = [False, True] if rnd % 2 == 0 else [True, False]
                    for conditional in order:
                        if btype is None:
                            factory: Any = Upserts(h.HOST, srv.port, patients, conns, conditional=conditional, seed=rnd)
                        else:
                            factory = BundleUpserts(h.HOST, srv.port, patients, conns, conditional=conditional,
                                                    seed=rnd, btype=btype, size=BUNDLE_SIZE)
                        r = measure(srv, postmaster, factory, conns, args, 1 if btype is None else BUNDLE_SIZE)
                        kind = "conditional" if conditional else "plain"
                        runs.append({"round": rnd, "scenario": name, "kind": kind, **r})
                        print(f"round {rnd} {name:<11} c={conns:<2} {kind:<11} {r['updates_per_s']:>8.1f} updates/s "
                              f"p50 {r['p50_ms']:>6.2f} p99 {r['p99_ms']:>7.2f} ms; CPU ms/update server "
                              f"{r['cpu_ms_per_update_server']}, postgres {r['cpu_ms_per_update_postgres']}; "
                              f"cores {r['cores']}; failed {r['failed']}; load {r['loadavg_1m']}", flush=True)
            errors_logged = srv.log_tail(10**7).count('"level":"error"')
    table = []
    print(f"\n{'scenario':<12} {'conc':>4} {'plain/s':>9} {'cond/s':>9} {'ratio':>6} {'plain ms CPU srv+pg':>20} {'cond ms CPU srv+pg':>20}")
    for name, conns, _ in SCENARIOS:
        row: dict[str, Any] = {"scenario": name, "connections": conns}
        for kind in ("plain", "conditional"):
            rs = [r for r in runs if r["scenario"] == name and r["connections"] == conns and r["kind"] == kind]
            row[kind] = {
                "updates_per_s": statistics.median(r["updates_per_s"] for r in rs),
                "cpu_ms_server": round(statistics.median(r["cpu_ms_per_update_server"] for r in rs), 3),
                "cpu_ms_postgres": round(statistics.median(r["cpu_ms_per_update_postgres"] for r in rs), 3),
                "failed": sum(r["failed"] for r in rs),
            }
        row["ratio"] = round(row["conditional"]["updates_per_s"] / row["plain"]["updates_per_s"], 2)
        row["cpu_ratio"] = round((row["conditional"]["cpu_ms_server"] + row["conditional"]["cpu_ms_postgres"])
                                 / (row["plain"]["cpu_ms_server"] + row["plain"]["cpu_ms_postgres"]), 2)
        table.append(row)
        pl, co = row["plain"], row["conditional"]
        print(f"{name:<12} {conns:>4} {pl['updates_per_s']:>9.1f} {co['updates_per_s']:>9.1f} {row['ratio']:>6} "
              f"{pl['cpu_ms_server']:>9} + {pl['cpu_ms_postgres']:<8} {co['cpu_ms_server']:>9} + {co['cpu_ms_postgres']:<8}"
              f" (CPU ratio {row['cpu_ratio']})")
    report = {
        "started": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).as_posix(), *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "postgres": pg_version},
        "settings": dict(vars(args), patients=PATIENTS, bundle_size=BUNDLE_SIZE),
        "server_errors_logged": errors_logged, "table": table, "runs": runs,
    }
    out_dir = h.BENCH / "results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"upsert-{started.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {out.relative_to(h.ROOT)}")
    return 0


if __name__ == "__main__":
    h.run_main(main)

"""What the audit trail costs: creates and reads with auditing on vs FHIR_AUDIT=off, in one run.

    /work/venv/bin/python bench/bench_audit.py [--rounds 2] [--seconds 10] [--workers 2]

Each round starts, for each mode (the order alternates between rounds, so drift on a shared
machine falls on both), a fresh database and the real server (``fhir-server serve --dev``) with
``FHIR_AUDIT=on`` or ``off``, then measures Patient creates (16 connections), runs ANALYZE, restarts
the server and measures random reads (16 connections). "on" is the production configuration:
each write's audit row in its own statement, reads through the batching COPY sink, and the
sealing pass (hash chain) every second in each worker. Rate limiting is off in both modes
(in-memory counters with limits far above the load: its own cost is not what is measured here). CPU is sampled over the measured window
for the server processes and PostgreSQL: CPU per request = (server + PostgreSQL cores) / req/s.

FHIR_AUDIT=off exists for this benchmark only: never run a server with real patient data with it.
Prints a table (medians over the rounds, and the on/off ratios) and writes bench/results/audit-<ts>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
from pathlib import Path
from typing import Any

import harness as h
from bench_rest import Bench, machine
from workloads import CreatePatients, RandomReads

GOAL_COST = 0.15
# rate limiting is not what is measured: per-process memory counters, limits far above the load
NO_RATE_LIMITS = {"FHIR_RATE_LIMIT_STORAGE": "memory",
                  "FHIR_RATE_LIMITS": "read=100000000/minute;search=100000000/minute;write=100000000/minute"}  # "auditing costs writes no more than 15 %"
CONNECTIONS = 16


def _cpu_us(r: dict[str, Any]) -> float:
    cores = r["cpu_cores"].get("server", 0.0) + r["cpu_cores"].get("postgres", 0.0)
    return round(cores / r["ok_rps"] * 1e6, 1) if r["ok_rps"] else float("nan")


def run_mode(bench: Bench, args: argparse.Namespace, mode: str, label: str) -> dict[str, Any]:
    out: dict[str, Any] = {"mode": mode}
    with h.fresh_database(bench.admin_url, f"audit_{label}") as db:
        log = bench.tmp / f"server-audit-{label}.log"
        with h.fhir_server(db, args.workers, log, FHIR_AUDIT=mode, **NO_RATE_LIMITS) as srv:
            srv.start("/fhir/metadata")
            out["create"] = bench.load(srv, CreatePatients(h.HOST, srv.port), CONNECTIONS, f"create Patient, audit {mode}")
        ids = [str(r[0]) for r in h.query(db, "SELECT id FROM resource WHERE resource_type = 'Patient' AND NOT deleted")]
        if not ids:
            raise RuntimeError(f"no Patient was created; server log:\n{log.read_text(errors='replace')[-4000:]}")
        h.execute(db, "ANALYZE")
        with h.fhir_server(db, args.workers, log, FHIR_AUDIT=mode, **NO_RATE_LIMITS) as srv:
            srv.start("/fhir/metadata")
            out["read"] = bench.load(srv, RandomReads(h.HOST, srv.port, ids), CONNECTIONS, f"read Patient, audit {mode}")
        out["patients"] = len(ids)
        out["audit_rows"] = int(h.query(db, "SELECT count(*) FROM audit_event")[0][0])
        out["sealed_rows"] = int(h.query(db, "SELECT coalesce(sum(cardinality(audit_id)), 0) FROM audit_seal")[0][0])
        text = log.read_text(errors="replace")
        out["off_banner_logged"] = "THE AUDIT TRAIL IS OFF" in text
        out["server_errors_logged"] = text.count('"level":"error"') - text.count("THE AUDIT TRAIL IS OFF")
    print(f"  audit {mode}: {out['patients']} patients, {out['audit_rows']} audit rows, {out['sealed_rows']} sealed",
          flush=True)
    return out


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for scenario in ("create", "read"):
        for mode in ("on", "off"):
            rs = [r[scenario] for r in runs if r["mode"] == mode]
            summary[f"{scenario}_{mode}"] = {
                "rps_median": statistics.median(r["ok_rps"] for r in rs),
                "rps_each": [r["ok_rps"] for r in rs],
                "p99_ms_median": statistics.median(r["latency_ms"]["p99"] for r in rs),
                "cpu_us_per_request_median": statistics.median(_cpu_us(r) for r in rs),
                "cpu_us_each": [_cpu_us(r) for r in rs],
                "other_cores_median": statistics.median(r["cpu_cores"].get("other", 0.0) for r in rs),
            }
        on, off = summary[f"{scenario}_on"], summary[f"{scenario}_off"]
        summary[f"{scenario}_ratio"] = {
            "throughput_on_over_off": round(on["rps_median"] / off["rps_median"], 3),
            "cpu_per_request_on_over_off": round(on["cpu_us_per_request_median"] / off["cpu_us_per_request_median"], 3),
        }
    return summary


def print_summary(s: dict[str, Any]) -> None:
    print()
    print(f"{'scenario':<8} {'audit':<5} {'req/s (median)':>15} {'each':>22} {'p99 ms':>8} {'CPU µs/req':>11} {'other cores':>12}")
    for scenario in ("create", "read"):
        for mode in ("on", "off"):
            r = s[f"{scenario}_{mode}"]
            print(f"{scenario:<8} {mode:<5} {r['rps_median']:>15.1f} {r['rps_each']!s:>22} {r['p99_ms_median']:>8.2f} "
                  f"{r['cpu_us_per_request_median']:>11.1f} {r['other_cores_median']:>12.2f}")
        ratio = s[f"{scenario}_ratio"]
        cost = 1 - ratio["throughput_on_over_off"]
        cpu_cost = ratio["cpu_per_request_on_over_off"] - 1
        goal = f"  goal <= {GOAL_COST:.0%}: {'MET' if max(cost, cpu_cost) <= GOAL_COST else 'NOT MET'}" if scenario == "create" else ""
        print(f"{scenario:<8} on/off throughput {ratio['throughput_on_over_off']:.3f} (cost {cost:+.1%}), "
              f"CPU per request {ratio['cpu_per_request_on_over_off']:.3f} (cost {cpu_cost:+.1%}){goal}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=2, help="rounds of (on, off) pairs, alternating order (default 2)")
    p.add_argument("--seconds", type=float, default=10, help="measured seconds per scenario (default 10)")
    p.add_argument("--warmup", type=float, default=2, help="unmeasured warm-up seconds (default 2)")
    p.add_argument("--workers", type=int, default=2, help="server worker processes (default 2)")
    p.add_argument("--max-requests", type=int, default=500_000)
    args = p.parse_args(argv)
    h.install_signal_handlers()
    started = dt.datetime.now()
    runs: list[dict[str, Any]] = []
    with h.temp_dir("fhir-bench-audit-") as tmp, h.postgres(tmp) as (admin_url, postmaster):
        pg_version = h.query(admin_url, "SHOW server_version")[0][0]
        bench = Bench(args, tmp, admin_url, postmaster)
        for i in range(args.rounds):
            for mode in (("on", "off") if i % 2 == 0 else ("off", "on")):
                print(f"round {i + 1}, audit {mode}", flush=True)
                runs.append(run_mode(bench, args, mode, f"{mode}{i}"))
    summary = summarise(runs)
    print_summary(summary)
    report = {
        "started": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).as_posix(), *sys.argv]),
        "machine": dict(machine(), postgres=pg_version),
        "settings": vars(args),
        "summary": summary,
        "runs": runs,
    }
    out_dir = h.BENCH / "results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"audit-{started.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {out.relative_to(h.ROOT)}")
    return 0


if __name__ == "__main__":
    h.run_main(main)

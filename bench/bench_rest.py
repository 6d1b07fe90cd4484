"""REST benchmark of the FHIR server: creates, reads (vs the framework ceiling), If-Match updates.

    /work/venv/bin/python bench/bench_rest.py [--workers 1,2] [--seconds 10]

For each worker count: a fresh database (embedded PostgreSQL in a temp dir, or DATABASE_URL as
admin connection), the real server (`python -m fhir_server.cli serve --dev --workers N`), and the
ceiling app (bench/ceiling_app.py, same stack without database or FHIR logic). The load generator
(bench/loadgen.py) runs in its own process. Prints a table and writes bench/results/<ts>.json.
Everything is stopped and deleted at the end, on error and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import harness as h
import loadgen
from workloads import CreatePatients, IfMatchUpdates, RandomReads

GOAL_CREATES = 1000.0
GOAL_READ_RATIO = 0.5
GOAL_P99_C64_MS = 25.0
READ_CONCURRENCY = (1, 16, 64)
CREATE_CONCURRENCY = 16
UPDATE_CONCURRENCY = 16


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"nproc": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and "cpu_model" not in info:
                info["cpu_model"] = line.split(":", 1)[1].strip()
            if line.startswith("cpu MHz") and "cpu_mhz" not in info:
                info["cpu_mhz"] = float(line.split(":", 1)[1])
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
        info["mem_gib"] = round(int(mem) / 2**20, 1)
    for pkg in ("fastapi", "starlette", "uvicorn", "uvloop", "httptools", "psycopg", "orjson"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            info[pkg] = metadata.version(pkg)
    return info


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path, admin_url: str, postmaster: int | None) -> None:
        self.args, self.tmp, self.admin_url, self.postmaster = args, tmp, admin_url, postmaster

    def index_usage(self, db: str | None) -> dict[str, tuple[int, int]]:
        if db is None:
            return {}
        rows = h.query(db, "SELECT relname || '.' || indexrelname, idx_scan, idx_tup_read FROM pg_stat_user_indexes")
        return {str(r[0]): (int(r[1] or 0), int(r[2] or 0)) for r in rows}

    def load(self, proc: h.Proc, factory: Any, connections: int, label: str, db: str | None = None) -> dict[str, Any]:
        meter = h.CpuMeter({"server": proc.pids, "postgres": lambda: h.postgres_pids(self.postmaster)})
        cores: dict[str, float] = {}

        def on_mark(name: str) -> None:  # CPU over exactly the measured window
            if name == "measure-start":
                meter.start()
            elif name == "measure-end":
                cores.update(meter.stop())

        idx0 = self.index_usage(db)
        result = loadgen.run_in_subprocess(
            h.HOST, proc.port, factory, on_mark=on_mark, connections=connections, duration=self.args.seconds,
            max_requests=self.args.max_requests, warmup=self.args.warmup,
        )
        cores["loadgen"] = result["loadgen_cores"]
        cores["other"] = round(max(0.0, cores.get("machine", 0) - cores.get("server", 0) - cores.get("postgres", 0)
                                   - cores["loadgen"]), 2)
        result["cpu_cores"] = cores
        if db is not None:
            time.sleep(1.5)  # backends report their statistics at most once a second
            idx1 = self.index_usage(db)
            result["index_usage"] = {  # index: [scans, index tuples read per scan] (includes the warm-up)
                k: [n, round((idx1[k][1] - idx0.get(k, (0, 0))[1]) / n, 1)]
                for k in idx1 if (n := idx1[k][0] - idx0.get(k, (0, 0))[0]) > 0
            }
        lat = result["latency_ms"]
        print(f"  {label:<34} c={connections:<3} {result['rps']:>9.1f} req/s  p50 {lat['p50']:>7.2f}  "
              f"p99 {lat['p99']:>7.2f} ms  {result['status']} {result['errors'] or ''}  cores {cores}", flush=True)
        if result.get("index_usage"):
            print(f"  {'':<34} index scans [n, tuples/scan]: {result['index_usage']}", flush=True)
        return result

    def run_workers(self, workers: int) -> dict[str, Any]:
        out: dict[str, Any] = {"workers": workers}
        with h.fresh_database(self.admin_url, f"w{workers}") as db:
            log = self.tmp / f"server-w{workers}.log"
            with h.fhir_server(db, workers, log) as srv:
                srv.start("/fhir/metadata")
                print(f"workers={workers}: server on :{srv.port} (pids {srv.pids()})", flush=True)
                out["create"] = self.load(srv, CreatePatients(h.HOST, srv.port), CREATE_CONCURRENCY, "create Patient", db)
                ids = [r[0] for r in h.query(db, "SELECT id FROM resource WHERE resource_type = 'Patient' AND NOT deleted")]
                if not ids:
                    raise RuntimeError(f"no Patient was created; server log:\n{srv.log_tail()}")
                out["patients_in_db"] = len(ids)
                # Right after the creates PostgreSQL has no statistics on the new rows (autovacuum
                # analyzes within about a minute): what a freshly loaded server does. See README.
                out["read_before_analyze"] = self.load(srv, RandomReads(h.HOST, srv.port, ids), 16,
                                                       "read Patient, before ANALYZE", db)
            # Steady state: statistics present AND fresh pool connections. A restart is needed because
            # connections that cached the read plan before ANALYZE may keep it (seen with 2 workers).
            h.execute(db, "ANALYZE")
            with h.fhir_server(db, workers, log) as srv:
                srv.start("/fhir/metadata")
                print(f"workers={workers}: ANALYZE, server restarted on :{srv.port}", flush=True)
                sample = h.http_get(f"http://{h.HOST}:{srv.port}/fhir/Patient/{ids[0]}")
                body_file = self.tmp / "patient.json"
                body_file.write_bytes(sample)
                out["read_body_bytes"] = len(sample)
                with h.ceiling_server(workers, body_file, self.tmp / f"ceiling-w{workers}.log") as ceil:
                    ceil.start("/fhir/Patient/warm-up")
                    out["read"], out["ceiling"] = {}, {}
                    for c in READ_CONCURRENCY:
                        out["read"][c] = self.load(srv, RandomReads(h.HOST, srv.port, ids), c, "read Patient (server)", db)
                        out["ceiling"][c] = self.load(ceil, RandomReads(h.HOST, ceil.port, ids), c, "read Patient (ceiling)")
                owned = [(str(r[0]), int(r[1])) for r in h.query(
                    db, "SELECT id, version_id FROM resource WHERE resource_type = 'Patient' ORDER BY id LIMIT %s",
                    (UPDATE_CONCURRENCY,))]
                out["update"] = self.load(srv, IfMatchUpdates(h.HOST, srv.port, owned), len(owned), "If-Match update", db)
            text = log.read_text(errors="replace")
            out["access_log_lines"] = text.count('"logger":"fhir_server.access"')
            out["server_errors_logged"] = text.count('"level":"error"') + text.count("Traceback")
            if self.args.log_off_pass:
                log2 = self.tmp / f"server-w{workers}-nolog.log"
                c = READ_CONCURRENCY[-1]
                with h.fhir_server(db, workers, log2, FHIR_ACCESS_LOG="false") as srv:
                    srv.start("/fhir/metadata")
                    out["nolog_read"] = self.load(srv, RandomReads(h.HOST, srv.port, ids), c, "read Patient, access log OFF", db)
                    out["nolog_create"] = self.load(srv, CreatePatients(h.HOST, srv.port, seed=7), CREATE_CONCURRENCY,
                                                    "create Patient, access log OFF")
                with h.ceiling_server(workers, body_file, self.tmp / f"ceiling-w{workers}-nolog.log",
                                      FHIR_ACCESS_LOG="false") as ceil:
                    ceil.start("/fhir/Patient/warm-up")
                    out["nolog_ceiling"] = self.load(ceil, RandomReads(h.HOST, ceil.port, ids), c,
                                                     "read Patient (ceiling), access log OFF")
            if self.args.keep_logs:
                keep = h.BENCH / "results" / "logs"
                keep.mkdir(parents=True, exist_ok=True)
                for f in self.tmp.glob(f"*-w{workers}*.log"):
                    f.replace(keep / f.name)
        return out


def _errors(r: dict[str, Any], ok_statuses: tuple[str, ...]) -> int:
    bad = sum(n for k, n in r["status"].items() if k.split()[1] not in ok_statuses)
    return bad + sum(r["errors"].values())


def table(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def row(w: int, scenario: str, r: dict[str, Any], *, ceiling: dict[str, Any] | None = None,
            goal: str = "", met: bool | None = None, ok: tuple[str, ...] = ("200",)) -> None:
        lat = r["latency_ms"]
        rows.append({
            "workers": w, "scenario": scenario, "concurrency": r["connections"],
            "rps": r["ok_rps"], "p50_ms": lat["p50"], "p95_ms": lat["p95"], "p99_ms": lat["p99"], "max_ms": lat["max"],
            "ceiling_rps": ceiling["rps"] if ceiling else None,
            "ratio": round(r["ok_rps"] / ceiling["rps"], 2) if ceiling else None,
            "errors": _errors(r, ok), "goal": goal, "met": met, "cores": r["cpu_cores"],
        })

    for run in runs:
        w = run["workers"]
        cr = run["create"]
        row(w, "create", cr, goal=f">= {GOAL_CREATES:.0f}/s", met=cr["ok_rps"] >= GOAL_CREATES and _errors(cr, ("201",)) == 0,
            ok=("201",))
        if "read_before_analyze" in run:
            c = run["read_before_analyze"]["connections"]
            row(w, "read, before ANALYZE", run["read_before_analyze"], ceiling=run["ceiling"].get(c))
        for c, r in run["read"].items():
            ceil = run["ceiling"][c]
            ratio = r["ok_rps"] / ceil["rps"]
            goal, met = f">= {GOAL_READ_RATIO:.0%} ceiling", ratio >= GOAL_READ_RATIO
            if int(c) == READ_CONCURRENCY[-1]:
                goal += f", p99 <= {GOAL_P99_C64_MS:.0f} ms"
                met = met and r["latency_ms"]["p99"] <= GOAL_P99_C64_MS
            row(w, "read", r, ceiling=ceil, goal=goal, met=met and _errors(r, ("200",)) == 0)
        for c, r in run["ceiling"].items():
            row(w, "ceiling read", r)
        up = run["update"]
        row(w, "If-Match update", up, goal="all 200, no 412", met=_errors(up, ("200",)) == 0)
        if "nolog_read" in run:
            row(w, "read, access log off", run["nolog_read"], ceiling=run["nolog_ceiling"])
            row(w, "ceiling read, access log off", run["nolog_ceiling"])
            row(w, "create, access log off", run["nolog_create"], ok=("201",))
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    hdr = f"{'w':>2} {'scenario':<29} {'conc':>4} {'req/s':>9} {'p50':>7} {'p95':>7} {'p99':>7} {'max':>7} " \
          f"{'ceiling':>9} {'ratio':>5} {'err':>4}  goal"
    print()
    print(hdr)
    print("-" * len(hdr) + "-" * 30)
    for r in rows:
        goal = f"{r['goal']}: {'MET' if r['met'] else 'NOT MET'}" if r["goal"] else ""
        print(f"{r['workers']:>2} {r['scenario']:<29} {r['concurrency']:>4} {r['rps']:>9.1f} {r['p50_ms']:>7.2f} "
              f"{r['p95_ms']:>7.2f} {r['p99_ms']:>7.2f} {r['max_ms']:>7.1f} "
              f"{r['ceiling_rps'] if r['ceiling_rps'] is not None else '':>9} "
              f"{r['ratio'] if r['ratio'] is not None else '':>5} {r['errors']:>4}  {goal}")
    print("(latencies in ms; req/s counts successful responses only)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", default="1,2", help="worker count(s), comma-separated (default 1,2)")
    p.add_argument("--seconds", type=float, default=10, help="measured seconds per scenario (default 10)")
    p.add_argument("--warmup", type=float, default=2, help="unmeasured warm-up seconds per scenario (default 2)")
    p.add_argument("--max-requests", type=int, default=500_000, help="cap on measured requests per scenario")
    p.add_argument("--no-log-off-pass", dest="log_off_pass", action="store_false",
                   help="skip the extra pass with FHIR_ACCESS_LOG=false")
    p.add_argument("--keep-logs", action="store_true", help="keep the server logs in bench/results/logs/")
    args = p.parse_args(argv)
    worker_counts = [int(x) for x in str(args.workers).split(",") if x.strip()]
    h.install_signal_handlers()
    started = dt.datetime.now()
    runs = []
    with h.temp_dir("fhir-bench-") as tmp, h.postgres(tmp) as (admin_url, postmaster):
        pg_version = h.query(admin_url, "SHOW server_version")[0][0]
        bench = Bench(args, tmp, admin_url, postmaster)
        for w in worker_counts:
            runs.append(bench.run_workers(w))
    rows = table(runs)
    print_table(rows)
    report = {
        "started": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).as_posix(), *sys.argv]),
        "machine": dict(machine(), postgres=pg_version,
                        database="DATABASE_URL" if os.environ.get("DATABASE_URL") else "embedded (temp dir)"),
        "settings": {"seconds": args.seconds, "warmup": args.warmup, "max_requests": args.max_requests,
                     "create_concurrency": CREATE_CONCURRENCY, "update_concurrency": UPDATE_CONCURRENCY,
                     "read_concurrency": list(READ_CONCURRENCY)},
        "table": rows,
        "runs": runs,
    }
    out_dir = h.BENCH / "results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"{started.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {out.relative_to(h.ROOT)}")
    return 0


if __name__ == "__main__":
    h.run_main(main)

#!/usr/bin/env python
"""Transaction ingest over real HTTP: the Synthea patient bundles, each one ``POST /fhir``, with 1
and with 4 parallel clients, against the same resources created one by one with plain
``POST /fhir/[type]`` (the baseline), in the same run, on the same server and database.

    /work/venv/bin/python bench/bench_transaction.py                       # all 190 bundles (~52,000 entries) per pass
    /work/venv/bin/python bench/bench_transaction.py --bundles 40 --baseline-bundles 5 --clients 1,4

Data: /work/shared/data/synthea — 150 bundles of smart-generated-sample-data (urn:uuid references)
and 40 of fhir-data-pipes-synthea-hiv (conditional references ``Practitioner?identifier=…`` and
``ifNoneExist`` entries). Their hospital/practitioner information bundles are loaded first (not
timed): the hiv bundles' conditional references resolve to them. ``--bundles N`` takes the first
N of the 190 (smart ones first, then hiv, interleaved 15:4 so any prefix has both kinds).

Each pass sends every bundle once; with C clients the bundles are shared out from one queue.
Every entry is validated, indexed and audited as in production (server defaults, 2 workers,
``Prefer: return=minimal``, access log off). Reported per pass: entries/s (wall clock), the CPU
of the server processes and of PostgreSQL (average cores and milliseconds per entry — the figure
that holds when other work shares the machine), the machine's CPU and the load average.
The baseline POSTs the resources of the first ``--baseline-bundles`` smart bundles one request
each (urn:uuid references left as they are: valid strings; it measures the per-request path).
Writes bench/results/transaction-<ts>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import queue
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h

DATA = Path("/work/shared/data/synthea")
SMART = DATA / "smart-generated-sample-data"
HIV = DATA / "fhir-data-pipes-synthea-hiv"
GOAL = 1500.0  # transaction ingest, resources/s


def _files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(patient bundles, hospital/practitioner information bundles) of one Synthea folder."""
    files = sorted(folder.glob("*.json.gz"))
    return [p for p in files if "Information" not in p.name], [p for p in files if "Information" in p.name]


def load_bundles(n: int | None) -> dict[str, tuple[list[bytes], list[bytes]]]:
    """{data set: (patient bundles, information bundles)}; ``n``: the first n of the 190 patient
    bundles, taken 15 smart : 4 hiv so that any prefix holds both kinds."""
    smart, smart_info = _files(SMART)
    hiv, hiv_info = _files(HIV)
    smart, hiv = smart[:150], hiv[:40]
    order: list[Path] = []
    while smart or hiv:
        order += smart[:15] + hiv[:4]
        smart, hiv = smart[15:], hiv[4:]
    if n is not None:
        order = order[:n]
    out: dict[str, tuple[list[bytes], list[bytes]]] = {}
    for folder, info in ((SMART, smart_info), (HIV, hiv_info)):
        mine = [gzip.decompress(p.read_bytes()) for p in order if p.parent == folder]
        if mine:
            out[folder.name] = (mine, [gzip.decompress(p.read_bytes()) for p in info])
    return out


def post_bundle(client: httpx.Client, raw: bytes) -> int:
    r = client.post("/fhir", content=raw, headers={"Prefer": "return=minimal", "Content-Type": "application/fhir+json"})
    if r.status_code != 200:
        raise RuntimeError(f"bundle failed: {r.status_code} {r.text[:800]}")
    statuses = [e["response"]["status"] for e in r.json()["entry"]]
    bad = [s for s in statuses if not s.startswith(("200", "201"))]
    if bad:
        raise RuntimeError(f"bundle entries failed: {bad[:5]}")
    return len(statuses)


def post_one_by_one(client: httpx.Client, raw: bytes) -> int:
    bundle: dict[str, Any] = json.loads(raw)
    for e in bundle["entry"]:
        resource = e["resource"]
        headers = {"Prefer": "return=minimal", "Content-Type": "application/fhir+json"}
        if e["request"].get("ifNoneExist"):
            headers["If-None-Exist"] = e["request"]["ifNoneExist"]
        r = client.post(f"/fhir/{resource['resourceType']}", content=json.dumps(resource), headers=headers)
        if r.status_code not in (200, 201):
            raise RuntimeError(f"create failed: {r.status_code} {r.text[:500]}")
    return len(bundle["entry"])


def run_pass(srv: h.Proc, postmaster: int | None, fn: Any, bundles: list[bytes], clients: int) -> dict[str, Any]:
    """Every bundle once through ``fn``, ``clients`` threads taking bundles from one queue."""
    work: queue.Queue[bytes] = queue.Queue()
    for raw in bundles:
        work.put(raw)
    done: list[int] = []
    errors: list[str] = []

    def client_loop() -> None:
        with httpx.Client(base_url=f"http://{h.HOST}:{srv.port}", timeout=600) as client:
            while not errors:
                try:
                    raw = work.get_nowait()
                except queue.Empty:
                    return
                try:
                    done.append(fn(client, raw))
                except Exception as exc:  # noqa: BLE001 - reported below
                    errors.append(str(exc))

    meter = h.CpuMeter({"server": srv.pids, "postgres": lambda: h.postgres_pids(postmaster)})
    load0 = os.getloadavg()[0]
    meter.start()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    cpu = meter.stop()
    if errors:
        raise RuntimeError(f"{len(errors)} failures, first: {errors[0]}\n{srv.log_tail(3000)}")
    entries = sum(done)
    per_entry = {f"cpu_ms_per_entry_{k}": round(cpu[k] * wall * 1000 / entries, 3) for k in ("server", "postgres")}
    return {"clients": clients, "bundles": len(bundles), "entries": entries, "seconds": round(wall, 2),
            "entries_per_s": round(entries / wall, 1), **{f"cpu_{k}": v for k, v in cpu.items()}, **per_entry,
            "loadavg_1m": [round(load0, 2), round(os.getloadavg()[0], 2)]}


def _print(label: str, r: dict[str, Any]) -> None:
    print(f"{label:<44} clients={r['clients']}: {r['entries_per_s']:>8.1f} entries/s ({r['entries']} in {r['seconds']} s; "
          f"cores server {r['cpu_server']}, postgres {r['cpu_postgres']}, machine {r['cpu_machine']}; "
          f"CPU ms/entry server {r['cpu_ms_per_entry_server']}, postgres {r['cpu_ms_per_entry_postgres']}; "
          f"load {r['loadavg_1m']})", flush=True)


def combine(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Passes over the data sets taken together: entries over total seconds, CPU per entry weighted."""
    entries = sum(r["entries"] for r in parts)
    seconds = sum(r["seconds"] for r in parts)
    out: dict[str, Any] = {"clients": parts[0]["clients"], "bundles": sum(r["bundles"] for r in parts),
                           "entries": entries, "seconds": round(seconds, 2), "entries_per_s": round(entries / seconds, 1)}
    for k in ("server", "postgres", "machine"):
        out[f"cpu_{k}"] = round(sum(r[f"cpu_{k}"] * r["seconds"] for r in parts) / seconds, 2)
    for k in ("server", "postgres"):
        out[f"cpu_ms_per_entry_{k}"] = round(sum(r[f"cpu_ms_per_entry_{k}"] * r["entries"] for r in parts) / entries, 3)
    out["loadavg_1m"] = [parts[0]["loadavg_1m"][0], parts[-1]["loadavg_1m"][1]]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundles", type=int, default=None, help="the first N of the 190 patient bundles (default all)")
    p.add_argument("--baseline-bundles", type=int, default=5, help="smart bundles POSTed one resource at a time (default 5)")
    p.add_argument("--clients", default="1,4", help="parallel clients per pass, comma list (default 1,4)")
    p.add_argument("--workers", type=int, default=2, help="server processes (default 2, as fhir-server serve)")
    args = p.parse_args(argv)
    client_counts = [int(c) for c in args.clients.split(",") if c.strip()]
    h.install_signal_handlers()
    started = dt.datetime.now()
    sets = load_bundles(args.bundles)
    n_entries = {name: sum(len(json.loads(b)["entry"]) for b in bundles) for name, (bundles, _) in sets.items()}
    print(f"Synthea bundles per pass: {', '.join(f'{name} {len(b)} ({n_entries[name]} entries)' for name, (b, _) in sets.items())}; "
          f"baseline {args.baseline_bundles} smart bundles; load average {os.getloadavg()}", flush=True)
    passes: list[dict[str, Any]] = []
    with h.temp_dir("fhir-bench-tx-") as tmp, h.postgres(tmp) as (admin_url, postmaster):
        pg_version = h.query(admin_url, "SHOW server_version")[0][0]
        # one database per data set: both carry the same Synthea organisations, and the hiv bundles'
        # conditional references (Organization?identifier=…) must match exactly one
        for name, (bundles, info) in sets.items():
            with h.fresh_database(admin_url, "tx") as db, h.fhir_server(
                db, args.workers, tmp / f"server-{name}.log", FHIR_MAX_BODY_BYTES="100000000", FHIR_ACCESS_LOG="false"
            ) as srv:
                srv.start("/fhir/metadata")
                with httpx.Client(base_url=f"http://{h.HOST}:{srv.port}", timeout=600) as warm:
                    for raw in info:  # organisations, practitioners, locations (what the hiv bundles refer to)
                        post_bundle(warm, raw)
                    for _ in range(args.workers * 2):  # definitions loaded, connections open in every worker
                        post_bundle(warm, bundles[0])
                for clients in client_counts:
                    r = {"path": "transaction", "data": name, **run_pass(srv, postmaster, post_bundle, bundles, clients)}
                    passes.append(r)
                    _print(f"transaction {name}", r)
                if name == SMART.name and args.baseline_bundles:
                    for clients in client_counts:
                        r = {"path": "one-by-one", "data": name,
                             **run_pass(srv, postmaster, post_one_by_one, bundles[: args.baseline_bundles], clients)}
                        passes.append(r)
                        _print(f"one-by-one {name}", r)
    summary: dict[str, Any] = {}
    print()
    for clients in client_counts:
        tx = combine([r for r in passes if r["path"] == "transaction" and r["clients"] == clients])
        summary[f"transaction_c{clients}"] = tx
        _print("transaction, all data sets", tx)
        base = [r for r in passes if r["path"] == "one-by-one" and r["clients"] == clients]
        if base:
            summary[f"one_by_one_c{clients}"] = base[0]
            _print("one-by-one (baseline)", base[0])
            print(f"{'':<44} transaction / one-by-one: {tx['entries_per_s'] / base[0]['entries_per_s']:.1f}x entries/s, "
                  f"server CPU per entry {base[0]['cpu_ms_per_entry_server'] / tx['cpu_ms_per_entry_server']:.1f}x less")
    report = {
        "started": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).as_posix(), *sys.argv]),
        "machine": {"cpus": os.cpu_count(), "postgres": pg_version},
        "settings": vars(args), "entries_per_pass": n_entries, "goal_entries_per_s": GOAL,
        "summary": summary, "passes": passes,
    }
    out_dir = h.BENCH / "results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"transaction-{started.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {out.relative_to(h.ROOT)}")
    return 0


if __name__ == "__main__":
    h.run_main(main)

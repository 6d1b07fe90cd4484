#!/usr/bin/env python
"""Transaction Bundles over HTTP: Synthea patient bundles as one ``POST /fhir`` each, against the
same resources created one by one with plain ``POST /fhir/[type]`` (the baseline), in the same run.

    /work/venv/bin/python bench/bench_transaction.py [--bundles N] [--workers W] [--rounds R]

Each round takes the same N bundles through both paths on the same server and database (in
alternating order, so neither always runs on the warmer cache). Prints entries/s for each path
and the ratio, with the server's and PostgreSQL's CPU use (also per entry, which holds when
other work shares the machine); writes bench/results/transaction-<ts>.json.
The baseline leaves ``urn:uuid`` references as they are (valid strings) since no transaction
resolves them: it measures the per-request path, not reference handling.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h

SYNTHEA = Path("/work/shared/data/synthea/smart-generated-sample-data")


def load_bundles(n: int) -> list[bytes]:
    files = [p for p in sorted(SYNTHEA.glob("*.json.gz")) if "Information" not in p.name][:n]
    return [gzip.decompress(p.read_bytes()) for p in files]


def run_transaction(client: httpx.Client, raw: bytes) -> int:
    r = client.post("/fhir", content=raw, headers={"Prefer": "return=minimal", "Content-Type": "application/fhir+json"})
    if r.status_code != 200:
        raise RuntimeError(f"transaction failed: {r.status_code} {r.text[:500]}")
    return len(r.json()["entry"])


def run_one_by_one(client: httpx.Client, raw: bytes) -> int:
    bundle: dict[str, Any] = json.loads(raw)
    for e in bundle["entry"]:
        resource = e["resource"]
        r = client.post(f"/fhir/{resource['resourceType']}", json=resource, headers={"Prefer": "return=minimal"})
        if r.status_code != 201:
            raise RuntimeError(f"create failed: {r.status_code} {r.text[:500]}")
    return len(bundle["entry"])


def measure(srv: h.Proc, postmaster: int | None, fn: Any, bundles: list[bytes]) -> dict[str, float]:
    meter = h.CpuMeter({"server": srv.pids, "postgres": lambda: h.postgres_pids(postmaster)})
    with httpx.Client(base_url=f"http://{h.HOST}:{srv.port}", timeout=600) as client:
        meter.start()
        t0 = time.perf_counter()
        entries = sum(fn(client, raw) for raw in bundles)
        wall = time.perf_counter() - t0
    cpu = meter.stop()
    # CPU milliseconds per entry: what the path costs, even when other work shares the machine
    per_entry = {f"cpu_ms_per_entry_{k}": round(cpu[k] * wall * 1000 / entries, 2) for k in ("server", "postgres")}
    return {"entries": entries, "seconds": round(wall, 3), "entries_per_s": round(entries / wall, 1),
            **{f"cpu_{k}": v for k, v in cpu.items()}, **per_entry}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundles", type=int, default=3, help="Synthea patient bundles per round (default 3)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, each through both paths (default 3)")
    p.add_argument("--workers", type=int, default=1, help="server processes (default 1: one request at a time anyway)")
    args = p.parse_args(argv)
    h.install_signal_handlers()
    started = dt.datetime.now()
    bundles = load_bundles(args.bundles)
    n_entries = sum(len(json.loads(b)["entry"]) for b in bundles)
    print(f"{len(bundles)} Synthea bundles, {n_entries} entries, {sum(map(len, bundles)) / 1e6:.1f} MB per round", flush=True)
    runs: list[dict[str, Any]] = []
    with h.temp_dir("fhir-bench-tx-") as tmp, h.postgres(tmp) as (admin_url, postmaster):
        pg_version = h.query(admin_url, "SHOW server_version")[0][0]
        with h.fresh_database(admin_url, "tx") as db, h.fhir_server(
            db, args.workers, tmp / "server.log", FHIR_MAX_BODY_BYTES="100000000", FHIR_ACCESS_LOG="false"
        ) as srv:
            srv.start("/fhir/metadata")
            with httpx.Client(base_url=f"http://{h.HOST}:{srv.port}", timeout=600) as warm:
                run_transaction(warm, bundles[0])  # warm-up: definitions loaded, connections open
            for i in range(args.rounds):
                order = [("transaction", run_transaction), ("one-by-one", run_one_by_one)]
                if i % 2:
                    order.reverse()
                for name, fn in order:
                    result = {"round": i, "path": name, **measure(srv, postmaster, fn, bundles)}
                    runs.append(result)
                    print(f"round {i} {name:<12} {result['entries_per_s']:>8.1f} entries/s "
                          f"({result['seconds']:.2f} s; cpu server {result['cpu_server']}, "
                          f"postgres {result['cpu_postgres']}, machine {result['cpu_machine']}; CPU ms/entry "
                          f"server {result['cpu_ms_per_entry_server']}, postgres {result['cpu_ms_per_entry_postgres']})",
                          flush=True)
    median = {name: statistics.median(r["entries_per_s"] for r in runs if r["path"] == name)
              for name in ("transaction", "one-by-one")}
    ratio = median["transaction"] / median["one-by-one"]
    cpu_ms = {name: round(statistics.median(r["cpu_ms_per_entry_server"] for r in runs if r["path"] == name), 2)
              for name in ("transaction", "one-by-one")}
    print(f"\nmedian entries/s: transaction {median['transaction']:.1f}, one-by-one {median['one-by-one']:.1f}, "
          f"ratio {ratio:.2f}x; server CPU ms/entry: transaction {cpu_ms['transaction']}, one-by-one {cpu_ms['one-by-one']}")
    report = {
        "started": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).as_posix(), *sys.argv]),
        "machine": {"cpus": h.psutil.cpu_count(), "postgres": pg_version},
        "settings": vars(args), "entries_per_round": n_entries,
        "median_entries_per_s": median, "ratio": round(ratio, 2), "median_server_cpu_ms_per_entry": cpu_ms,
        "runs": runs,
    }
    out_dir = h.BENCH / "results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"transaction-{started.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {out.relative_to(h.ROOT)}")
    return 0


if __name__ == "__main__":
    h.run_main(main)

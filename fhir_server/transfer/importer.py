"""``fhir-server import``: Bundles (.json) and NDJSON (.ndjson), files or folders, gzip or plain.

Every file goes through the bundle service (``services.bundles``) exactly as ``POST [base]`` would:
a transaction Bundle (and an NDJSON file, a collection, a lone resource, each made a transaction)
is written whole or not at all, with ``urn:uuid`` and conditional references resolved; a batch
entry by entry. A bad file is reported and the good ones kept. One difference from HTTP, unless
``--server-ids``: a POSTed entry whose fullUrl is ``urn:uuid:<id>`` keeps that id, so importing
the same file again updates rather than duplicates. Files that fail on a missing dependency (a
conditional reference to what another file creates) are retried after the others.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from tqdm import tqdm

from fhir_server.audit.actor import Actor
from fhir_server.errors import FhirError
from fhir_server.services.bundles import BundleService
from fhir_server.services.resources import ResourceService
from fhir_server.storage.db import Database
from fhir_server.transfer.files import find_files, open_file

SUFFIXES = (".json", ".ndjson", ".json.gz", ".ndjson.gz")


def discover(paths: list[Path]) -> list[Path]:
    return find_files(paths, SUFFIXES)


def _read_text(path: Path) -> str:
    with open_file(path) as f:
        return f.read()


def _as_transaction(resources: list[Any]) -> dict[str, Any]:
    """Resources without requests (NDJSON lines, a collection, a lone resource) as a transaction:
    PUT when they carry an id, POST when they do not."""
    entries = []
    for resource in resources:
        rid = resource.get("id") if isinstance(resource, dict) else None
        rtype = resource.get("resourceType", "") if isinstance(resource, dict) else ""
        request = {"method": "PUT", "url": f"{rtype}/{rid}"} if rid else {"method": "POST", "url": rtype}
        entries.append({"resource": resource, "request": request})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def load_bundle(path: Path) -> tuple[dict[str, Any], bool]:
    """The file as a transaction or batch Bundle, and whether it was made from plain resources."""
    text = _read_text(path)
    if ".ndjson" in path.name:
        return _as_transaction([orjson.loads(line) for line in text.splitlines() if line.strip()]), True
    doc: Any = orjson.loads(text)
    if isinstance(doc, dict) and doc.get("resourceType") == "Bundle":
        if doc.get("type") in ("transaction", "batch"):
            return doc, False
        if doc.get("type") == "collection":
            sources = [e for e in doc.get("entry") or [] if isinstance(e, dict)]
            bundle = _as_transaction([e.get("resource") for e in sources])
            for made, source in zip(bundle["entry"], sources, strict=True):
                if source.get("fullUrl"):
                    made["fullUrl"] = source["fullUrl"]
            return bundle, False
    return _as_transaction([doc]), True


_AT_ENTRY = re.compile(r"Bundle\.entry\[(\d+)\](?:\.resource)?(.*)")


def _describe(exc: FhirError, bundle: dict[str, Any], made: bool) -> str:
    """The first issue; for plain resources the element as in the resource (``Patient.gender``)."""
    issue = exc.issues[0]
    where = issue.expression or ""
    m = _AT_ENTRY.fullmatch(where)
    if made and m:
        resource = bundle["entry"][int(m[1])].get("resource")
        rtype = resource.get("resourceType", "") if isinstance(resource, dict) else ""
        where = f"{rtype}{m[2]}" + (f" (resource {int(m[1]) + 1})" if len(bundle["entry"]) > 1 else "")
    return f"{issue.diagnostics} {where}".strip()


class _FileFailed(Exception):
    def __init__(self, reason: str, *, retry: bool, written: int = 0) -> None:
        super().__init__(reason)
        self.reason, self.retry, self.written = reason, retry, written


# a file failing on these may succeed once other files are in (a conditional reference, an ifMatch)
_DEPENDENCY_STATUSES = frozenset({404, 409, 412})


async def _import_file(bundles: BundleService, path: Path) -> int:
    """Import one file through the bundle service; the number of entries done."""
    try:
        bundle, made = load_bundle(path)
    except (ValueError, OSError) as exc:
        raise _FileFailed(str(exc), retry=False) from None
    try:
        _, results, _ = await bundles.run(bundle)
    except FhirError as exc:
        raise _FileFailed(_describe(exc, bundle, made), retry=exc.status in _DEPENDENCY_STATUSES) from None
    failed = [r.error for r in results if r.error is not None]
    done = len(results) - len(failed)
    if failed:  # a batch: the other entries are in
        raise _FileFailed(
            f"{len(failed)} of {len(results)} entries failed; first: {_describe(failed[0], bundle, made)}",
            retry=done == 0 and all(e.status in _DEPENDENCY_STATUSES for e in failed), written=done,
        )
    return done


async def run_import(database_url: str, paths: list[Path], *, tenant: str, server_ids: bool = False) -> int:
    db = Database(database_url, min_size=1, max_size=2, application_name="fhir-import")
    await db.open()
    service = ResourceService(db, tenant, Actor("fhir-server import", method="SYSTEM", path="import"))
    bundles = BundleService(service, keep_local_ids=not server_ids)
    written = 0
    bad: list[tuple[Path, str]] = []
    files = discover(paths)
    started = time.perf_counter()
    try:
        with tqdm(total=len(files), unit="file", file=sys.stderr) as bar:
            pending = files
            while pending:
                waiting: list[tuple[Path, str]] = []
                for path in pending:
                    try:
                        written += await _import_file(bundles, path)
                    except _FileFailed as failed:
                        written += failed.written
                        if failed.retry:
                            waiting.append((path, failed.reason))
                            continue
                        bad.append((path, failed.reason))
                    bar.update(1)
                    bar.set_postfix(resources=written)
                # files that failed on a missing dependency (a conditional reference to what another
                # file creates) get another pass, as long as the previous pass made progress
                if len(waiting) == len(pending):
                    bad.extend(waiting)
                    bar.update(len(waiting))
                    break
                pending = [path for path, _ in waiting]
        if written:
            # fresh planner statistics, so searches and reads use the right indexes at once
            async with db.connection() as conn:
                for table in ("resource", "resource_history", "idx_string", "idx_token", "idx_reference",
                              "idx_date", "idx_number", "idx_quantity", "idx_uri"):
                    await conn.execute(f"ANALYZE {table}")
    finally:
        await db.close()
    elapsed = time.perf_counter() - started
    print(f"imported {written} resources from {len(files) - len(bad)} files in {elapsed:.1f}s "
          f"({written / elapsed if elapsed else 0:.0f} resources/s); {len(bad)} bad files")
    for path, reason in bad:
        print(f"  bad file {path}: {reason}", file=sys.stderr)
    return 1 if bad else 0

"""``fhir-server import``: Bundles (.json) and NDJSON (.ndjson), files or folders, gzip or plain.

Every resource of a file is validated before any of it is written, so a bad file is reported
and skipped whole while the good ones are kept.
"""

from __future__ import annotations

import gzip
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from tqdm import tqdm

from fhir_server.audit.actor import Actor
from fhir_server.errors import FhirError
from fhir_server.services.conditional import find_matches
from fhir_server.services.resources import ResourceService
from fhir_server.services.validate import check_resource
from fhir_server.storage.db import Database
from fhir_server.transfer.bundles import ImportItem, bundle_items

SUFFIXES = (".json", ".ndjson", ".json.gz", ".ndjson.gz")


def discover(paths: list[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES)))
        else:
            files.append(path)
    return files


def _read_text(path: Path) -> str:
    if path.name.endswith(".gz"):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            return f.read()
    return path.read_text(encoding="utf-8")


def load_items(path: Path) -> list[ImportItem]:
    text = _read_text(path)
    if ".ndjson" in path.name:
        items = []
        for line in text.splitlines():
            if line.strip():
                resource = orjson.loads(line)
                items.append(ImportItem(resource, "PUT" if resource.get("id") else "POST"))
        return items
    doc: Any = orjson.loads(text)
    if isinstance(doc, dict) and doc.get("resourceType") == "Bundle" and doc.get("type") in ("transaction", "batch", "collection"):
        return bundle_items(doc)
    return [ImportItem(doc, "PUT" if isinstance(doc, dict) and doc.get("id") else "POST")]


async def _write(service: ResourceService, item: ImportItem) -> None:
    rtype = item.resource["resourceType"]
    if item.method == "PUT":
        if item.condition:
            async with service.db.connection() as conn:
                if await find_matches(conn, service.tenant, rtype, item.condition, limit=1):
                    return
        await service.update(rtype, item.resource["id"], item.resource)
    elif item.method == "CREATE_IF":
        await service.create(rtype, item.resource, if_none_exist=item.condition)
    else:
        await service.create(rtype, item.resource)


async def run_import(database_url: str, paths: list[Path], *, tenant: str) -> int:
    db = Database(database_url, min_size=1, max_size=2, application_name="fhir-import")
    await db.open()
    service = ResourceService(db, tenant, Actor("fhir-server import", method="SYSTEM", path="import"))
    written = 0
    bad: list[tuple[Path, str]] = []
    files = discover(paths)
    started = time.perf_counter()
    try:
        with tqdm(total=len(files), unit="file", file=sys.stderr) as bar:
            for path in files:
                try:
                    items = load_items(path)
                    for item in items:
                        check_resource(item.resource.get("resourceType", ""), item.resource, id_required=False)
                    for item in items:
                        await _write(service, item)
                        written += 1
                except (FhirError, ValueError, OSError) as exc:
                    detail = exc.issues[0].diagnostics if isinstance(exc, FhirError) else str(exc)
                    where = exc.issues[0].expression if isinstance(exc, FhirError) and exc.issues[0].expression else ""
                    bad.append((path, f"{detail} {where}".strip()))
                bar.update(1)
                bar.set_postfix(resources=written)
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

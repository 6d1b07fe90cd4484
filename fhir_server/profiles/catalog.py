"""The packaged project definitions (conformance.html#resources): one JSON file each.

* StructureDefinitions: ``fhir_server/definitions/project/structuredefinitions/*.json``;
* CodeSystems / ValueSets: ``terminology/codesystems/*.json``, ``terminology/valuesets/*.json`` whose
  ``url`` is in the project namespace (the same files ``terminology.packaged()`` expands).

Read once per process; a file that is not JSON or has no ``url``/``id`` is skipped with a log line
(it must not stop the server).
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import terminology

log = logging.getLogger("fhir_server.profiles")

BASE = "https://fhir-server.example.org/fhir/"
SD_DIR = Path(__file__).resolve().parents[1] / "definitions" / "project" / "structuredefinitions"
TERMINOLOGY_DIRS = tuple(Path(terminology.__file__).resolve().parent / d for d in ("codesystems", "valuesets"))
SERVED_TYPES = ("StructureDefinition", "CodeSystem", "ValueSet")


@dataclass
class Catalog:
    """The packaged definitions by type and id, and by canonical url."""

    by_id: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    by_url: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, res: dict[str, Any], source: Path) -> None:
        rtype, rid, url = res.get("resourceType"), res.get("id"), res.get("url")
        if rtype not in SERVED_TYPES or not isinstance(rid, str) or not isinstance(url, str):
            log.warning("project definition skipped: no resourceType/id/url", extra={"file": source.name})
            return
        if not url.startswith(BASE):
            return
        self.by_id[(rtype, rid)] = res
        self.by_url[url] = res

    def resources(self) -> list[dict[str, Any]]:
        """Every definition, code systems first (value sets and profiles refer to them)."""
        order = {t: i for i, t in enumerate(("CodeSystem", "ValueSet", "StructureDefinition"))}
        return sorted(self.by_id.values(), key=lambda r: (order[r["resourceType"]], r["id"]))

    def structure_definitions(self) -> list[dict[str, Any]]:
        return [r for r in self.by_id.values() if r["resourceType"] == "StructureDefinition"]

    def is_packaged(self, resource_type: str, resource_id: str | None, url: Any) -> bool:
        return (resource_type, resource_id) in self.by_id or (isinstance(url, str) and url in self.by_url)


def _read(path: Path) -> list[dict[str, Any]]:
    try:
        res = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("project definition skipped: %s", exc, extra={"file": path.name})
        return []
    if isinstance(res, dict) and res.get("resourceType") == "Bundle":
        return [e["resource"] for e in res.get("entry", ()) if isinstance(e, dict) and isinstance(e.get("resource"), dict)]
    return [res] if isinstance(res, dict) else []


def load(sd_dir: Path = SD_DIR, terminology_dirs: tuple[Path, ...] = TERMINOLOGY_DIRS) -> Catalog:
    cat = Catalog()
    for d in (*terminology_dirs, sd_dir):
        for path in sorted(d.glob("*.json")):
            for res in _read(path):
                cat.add(res, path)
    return cat


_catalog: Catalog | None = None
_lock = threading.Lock()


def catalog() -> Catalog:
    """The process-wide catalog, read on first use."""
    global _catalog
    if _catalog is None:
        with _lock:
            if _catalog is None:
                _catalog = load()
    return _catalog

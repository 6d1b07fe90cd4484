"""Input files shared by ``fhir-server import`` (``importer``) and the bulk loader (``bulk_load``):
finding them under files or folders, and opening them gzip or plain."""

from __future__ import annotations

import gzip
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any


def find_files(paths: Iterable[Path], suffixes: tuple[str, ...]) -> list[Path]:
    """Files as given; folders searched (sorted) for files whose name ends with one of ``suffixes``."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(suffixes)))
        else:
            files.append(path)
    return files


def open_file(path: Path, binary: bool = False) -> IO[Any]:
    """``path`` opened for reading, gunzipped if its name ends with ``.gz``; text is UTF-8."""
    opener: Any = gzip.open if path.name.endswith(".gz") else open
    if binary:
        return opener(path, "rb")
    return opener(path, "rt", encoding="utf-8")

"""Binary content (https://hl7.org/fhir/R4/binary.html, http.html#binary): rules between REST and storage.

A Binary is a row in ``resource``/``resource_history`` like any resource (versions, history,
audit, ``_id``/``_lastUpdated`` search unchanged). Its bytes:

* up to ``FHIR_BINARY_INLINE_MAX_BYTES`` stay base64 in ``data`` of the row (one transaction, no file);
* larger ones go to the blob store (``storage.blobs``) and the row holds no ``data``.

Either way the row records the content on the ``data`` element itself (a primitive extension,
``_data`` in JSON; HAPI FHIR marks externalized Binary the same way)::

    "_data": {"extension": [{"url": STORAGE_EXTENSION, "extension": [
        {"url": "size", "valueInteger": 1048576},
        {"url": "sha256", "valueString": "<64 hex digits>"},
        {"url": "key", "valueString": "ab/cd/abcd…"}]}]}     # key only when outside the row

The extension is server-owned: whatever a client sends under that url is dropped on write, so a
client can never point a Binary at someone else's blob. Reading a Binary as FHIR puts ``data``
back (streamed base64); search and history bundles carry the row as stored (size, checksum, no
``data``): read or vread the version for its content.

Every version keeps its own blob and deleting a resource keeps them (history stays readable).
A blob written for a write that then fails with a FHIR error (conflict, 412, invalid…) is
removed at once. What remains possible is a crash (or a lost database connection, where the
outcome is unknown) between writing the blob and committing the row: ``collect_garbage``
(``fhir-server blobs gc``) removes blobs no ``resource_history`` row refers to once they are an
hour old.

Entry points for other writers (transaction bundles, ``fhir-server import``): ``externalize``
(a Binary dict with base64 ``data`` → the dict to store, blob written) and ``store_bytes``
(a byte stream → a Binary dict to store); then write it with ``ResourceService`` and, if that
fails, ``discard`` it. ``BinaryService.create/update/conditional_update`` do all three.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import logging
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from fhir_server.errors import BadRequest, FhirError, PayloadTooLarge, UnsupportedMediaType
from fhir_server.services.resources import ResourceService, WriteResult
from fhir_server.storage.blobs import BlobMissing, BlobStore, LocalBlobStore, valid_key
from fhir_server.storage.repository import StoredVersion

__all__ = [
    "STORAGE_EXTENSION", "BinaryPolicy", "BinaryService", "BinaryVersion", "ContentTypePolicy", "Storage",
    "collect_garbage", "storage_of",
]

log = logging.getLogger("fhir_server.binary")

# The project's canonical namespace is https://fhir-server.example.org/fhir (one constant to
# change when the project owns a domain).
STORAGE_EXTENSION = "https://fhir-server.example.org/fhir/StructureDefinition/binary-storage"


@dataclass(frozen=True, slots=True)
class Storage:
    """What the storage extension records."""

    size: int
    sha256: str
    key: str | None  # None: the content is inline in ``data``


def storage_of(resource: dict[str, Any]) -> Storage | None:
    for ext in (resource.get("_data") or {}).get("extension") or ():
        if isinstance(ext, dict) and ext.get("url") == STORAGE_EXTENSION:
            parts = {e.get("url"): e for e in ext.get("extension") or () if isinstance(e, dict)}
            size = parts.get("size", {}).get("valueInteger", 0)
            sha = parts.get("sha256", {}).get("valueString", "")
            key = parts.get("key", {}).get("valueString")
            return Storage(int(size), str(sha), key if isinstance(key, str) else None)
    return None


def _strip_storage(resource: dict[str, Any]) -> None:
    """Drop a client-sent storage extension (server-owned, like ``meta.versionId``)."""
    element = resource.get("_data")
    if not isinstance(element, dict):
        return
    kept = [e for e in element.get("extension") or () if not (isinstance(e, dict) and e.get("url") == STORAGE_EXTENSION)]
    if kept:
        element["extension"] = kept
    else:
        element.pop("extension", None)
    if not element:
        resource.pop("_data")


def _set_storage(resource: dict[str, Any], storage: Storage) -> None:
    parts: list[dict[str, Any]] = [
        {"url": "size", "valueInteger": storage.size},
        {"url": "sha256", "valueString": storage.sha256},
    ]
    if storage.key is not None:
        parts.append({"url": "key", "valueString": storage.key})
    element = resource.setdefault("_data", {})
    element.setdefault("extension", []).append({"url": STORAGE_EXTENSION, "extension": parts})


def blob_key(resource: dict[str, Any]) -> str | None:
    storage = storage_of(resource)
    return storage.key if storage else None


def media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


class ContentTypePolicy:
    """``FHIR_BINARY_CONTENT_TYPES``: patterns like ``image/*``; ``!pattern`` refuses and wins."""

    def __init__(self, spec: str) -> None:
        items = [p.strip().lower() for p in spec.split(",") if p.strip()]
        self.allow = [p for p in items if not p.startswith("!")]
        self.deny = [p[1:] for p in items if p.startswith("!")]

    def allows(self, content_type: str) -> bool:
        mt = media_type(content_type)
        kind, slash, sub = mt.partition("/")
        if not (kind and slash and sub) or any(c.isspace() for c in mt):
            return False
        if any(fnmatch.fnmatchcase(mt, p) for p in self.deny):
            return False
        return any(fnmatch.fnmatchcase(mt, p) for p in self.allow)


@dataclass(frozen=True, slots=True)
class BinaryPolicy:
    max_bytes: int
    inline_max_bytes: int
    content_types: ContentTypePolicy

    @classmethod
    def from_settings(cls, settings: Any) -> BinaryPolicy:
        return cls(settings.max_binary_bytes, settings.binary_inline_max_bytes, ContentTypePolicy(settings.binary_content_types))

    def check_content_type(self, content_type: str | None) -> None:
        if content_type is not None and not self.content_types.allows(content_type):
            raise UnsupportedMediaType(
                f"Binary content of type '{content_type}' is not accepted by this server", expression="Binary.contentType"
            )

    def check_size(self, size: int) -> None:
        if size > self.max_bytes:
            raise PayloadTooLarge(f"The content is larger than the limit of {self.max_bytes} bytes")


@dataclass(slots=True)
class BinaryVersion:
    """A stored Binary version and what its row says about its content."""

    version: StoredVersion
    resource: dict[str, Any]
    storage: Storage | None

    @property
    def content_type(self) -> str:
        return str(self.resource.get("contentType") or "application/octet-stream")

    @property
    def security_context(self) -> str | None:
        ref = (self.resource.get("securityContext") or {}).get("reference")
        return ref if isinstance(ref, str) else None

    @property
    def external(self) -> bool:
        return self.storage is not None and self.storage.key is not None

    @property
    def size(self) -> int:
        if self.storage is not None:
            return self.storage.size
        data = self.resource.get("data")
        return len(base64.b64decode(data)) if isinstance(data, str) else 0


async def _split(chunks: AsyncIterable[bytes], n: int) -> tuple[bytes, AsyncIterator[bytes] | None]:
    """The first more-than-``n`` bytes of a stream and the rest (None if the stream ended within ``n``)."""
    it = aiter(chunks)
    head = bytearray()
    while len(head) <= n:
        try:
            head += await anext(it)
        except StopAsyncIteration:
            return bytes(head), None
    return bytes(head), it


async def _chain(head: bytes, rest: AsyncIterator[bytes] | None) -> AsyncIterator[bytes]:
    if head:
        yield head
    if rest is not None:
        async for chunk in rest:
            yield chunk


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


class BinaryService:
    """Binary writes and reads over a tenant-bound ``ResourceService`` and a blob store."""

    def __init__(self, resources: ResourceService, store: BlobStore, policy: BinaryPolicy) -> None:
        self.resources = resources
        self.store = store
        self.policy = policy

    # ---- turning content into a storable Binary -------------------------------------------
    async def store_bytes(
        self, chunks: AsyncIterable[bytes], content_type: str, *, security_context: str | None = None,
        resource_id: str | None = None,
    ) -> dict[str, Any]:
        """Raw bytes → a Binary dict ready for ``ResourceService`` (blob written if large).

        The bytes stream through: at most ``inline_max_bytes`` (+ one chunk) is held in memory.
        415 for a refused content type (before reading), 413 past the size limit (nothing kept).
        """
        self.policy.check_content_type(content_type)
        resource: dict[str, Any] = {"resourceType": "Binary"}
        if resource_id is not None:
            resource["id"] = resource_id
        resource["contentType"] = content_type
        if security_context:
            resource["securityContext"] = {"reference": security_context}
        head, rest = await _split(chunks, self.policy.inline_max_bytes)
        if rest is None:
            self.policy.check_size(len(head))
            resource["data"] = base64.b64encode(head).decode()
            _set_storage(resource, Storage(len(head), hashlib.sha256(head).hexdigest(), None))
            return resource
        info = await self.store.put(_chain(head, rest), max_bytes=self.policy.max_bytes)
        _set_storage(resource, Storage(info.size, info.sha256, info.key))
        return resource

    async def externalize(self, resource: dict[str, Any]) -> dict[str, Any]:
        """A Binary with base64 ``data`` → the same dict as it is stored (blob written if large).

        Changes ``resource`` in place and returns it. 400 for data that is not base64, 413/415 as
        ``store_bytes``. Call ``discard`` if the write that follows fails.
        """
        if not isinstance(resource, dict) or resource.get("resourceType") != "Binary":
            return resource  # the write's own validation reports it
        _strip_storage(resource)
        content_type = resource.get("contentType")
        self.policy.check_content_type(content_type if isinstance(content_type, str) else None)
        data = resource.pop("data", None)
        if data is None:
            return resource
        if not isinstance(data, str):
            raise BadRequest("Binary.data must be a base64 string", expression="Binary.data")
        text = "".join(data.split())
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("Binary.data is not valid base64", expression="Binary.data") from None
        self.policy.check_size(len(raw))
        if len(raw) <= self.policy.inline_max_bytes:
            resource["data"] = text
            _set_storage(resource, Storage(len(raw), hashlib.sha256(raw).hexdigest(), None))
            return resource
        info = await self.store.put(_once(raw), max_bytes=self.policy.max_bytes)
        _set_storage(resource, Storage(info.size, info.sha256, info.key))
        return resource

    async def discard(self, resource: dict[str, Any]) -> None:
        """Remove the blob of a Binary whose write did not happen."""
        key = blob_key(resource)
        if key is not None and valid_key(key):
            await self.store.delete(key)

    # ---- writes --------------------------------------------------------------------------
    async def _written(self, resource: dict[str, Any], write: Callable[[], Awaitable[WriteResult]]) -> WriteResult:
        try:
            result = await write()
        except FhirError:
            # a FHIR error means nothing was committed: the blob is garbage now. (Other failures,
            # e.g. a lost connection, leave the outcome unknown: the blob stays for `blobs gc`.)
            await self.discard(resource)
            raise
        return result

    async def create(self, resource: dict[str, Any], *, if_none_exist: str | None = None) -> WriteResult:
        """create (http.html#create) of a Binary given as FHIR (base64 ``data``)."""
        await self.externalize(resource)
        return await self.create_stored(resource, if_none_exist=if_none_exist)

    async def create_stored(self, resource: dict[str, Any], *, if_none_exist: str | None = None) -> WriteResult:
        """create of a Binary already externalized (``store_bytes``/``externalize``)."""
        result = await self._written(
            resource, lambda: self.resources.create("Binary", resource, if_none_exist=if_none_exist)
        )
        if not result.created:
            await self.discard(resource)  # If-None-Exist matched an existing Binary: ours is unused
        return result

    async def update(self, resource_id: str, resource: dict[str, Any], *, if_match: int | None = None) -> WriteResult:
        await self.externalize(resource)
        return await self.update_stored(resource_id, resource, if_match=if_match)

    async def update_stored(self, resource_id: str, resource: dict[str, Any], *, if_match: int | None = None) -> WriteResult:
        return await self._written(resource, lambda: self.resources.update("Binary", resource_id, resource, if_match=if_match))

    async def conditional_update(
        self, query: str, resource: dict[str, Any], *, if_match: int | None = None, stored: bool = False
    ) -> WriteResult:
        if not stored:
            await self.externalize(resource)
        return await self._written(
            resource, lambda: self.resources.conditional_update("Binary", query, resource, if_match=if_match)
        )

    # ---- reads ---------------------------------------------------------------------------
    async def read(self, resource_id: str) -> BinaryVersion:
        return _binary(await self.resources.read("Binary", resource_id))

    async def vread(self, resource_id: str, version_id: str) -> BinaryVersion:
        return _binary(await self.resources.vread("Binary", resource_id, version_id))

    async def open(self, binary: BinaryVersion, start: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """The content's bytes (a range of them), streamed from the blob store or the row."""
        if binary.external:
            assert binary.storage is not None and binary.storage.key is not None
            try:
                return await self.store.open(binary.storage.key, start, length)
            except BlobMissing:
                v = binary.version
                log.error("binary content missing", extra={"resource_id": v.id, "version_id": v.version_id})
                raise FhirError(f"The content of Binary/{v.id} version {v.version_id} is not available") from None
        data = binary.resource.get("data")
        raw = base64.b64decode(data) if isinstance(data, str) else b""
        return _once(raw[start:] if length is None else raw[start : start + length])

    async def inflated(self, binary: BinaryVersion) -> StoredVersion:
        """The version with ``data`` filled in, as one JSON text (for _summary/_elements/_pretty)."""
        if not binary.external:
            return binary.version
        data = bytearray()
        async for chunk in await self.open(binary):
            data += chunk
        resource = dict(binary.resource)
        resource["data"] = base64.b64encode(bytes(data)).decode()
        return replace(binary.version, content=orjson.dumps(resource).decode())

    async def json_stream(self, binary: BinaryVersion) -> tuple[AsyncIterator[bytes], int]:
        """The version as FHIR JSON with ``data`` streamed as base64, and its length in bytes."""
        prefix = orjson.dumps(binary.resource)[:-1] + b',"data":"'
        size = binary.size
        stream = await self.open(binary)

        async def chunks() -> AsyncIterator[bytes]:
            yield prefix
            carry = b""
            async for chunk in stream:
                buf = carry + chunk
                cut = len(buf) - len(buf) % 3  # base64 of whole 3-byte groups concatenates cleanly
                yield base64.b64encode(buf[:cut])
                carry = buf[cut:]
            yield base64.b64encode(carry) + b'"}'

        return chunks(), len(prefix) + 4 * ((size + 2) // 3) + 2


def _binary(version: StoredVersion) -> BinaryVersion:
    resource = orjson.loads(version.content or "{}")
    return BinaryVersion(version, resource, storage_of(resource))


# ---- garbage collection ---------------------------------------------------------------------
_REFERENCED_KEYS = (
    "SELECT DISTINCT k #>> '{}' FROM resource_history h, jsonb_path_query(h.content, "
    "'$._data.extension[*] ? (@.url == $u).extension[*] ? (@.url == \"key\").valueString', "
    "jsonb_build_object('u', %s::text)) AS k WHERE h.resource_type = 'Binary'"
)


@dataclass(slots=True)
class GarbageReport:
    removed: int = 0
    kept: int = 0
    partial_uploads_removed: int = 0


async def collect_garbage(
    conn: Any, store: BlobStore, *, min_age: timedelta = timedelta(hours=1), dry_run: bool = False
) -> GarbageReport:
    """Remove blobs that no ``resource_history`` row (any tenant, any version) refers to and that
    were last written more than ``min_age`` ago (younger ones may belong to a write in flight)."""
    cutoff = datetime.now(UTC) - min_age
    referenced: set[str] = set()
    async with conn.transaction(), conn.cursor(name="blob_gc") as cur:
        await cur.execute(_REFERENCED_KEYS, (STORAGE_EXTENSION,))
        async for (key,) in cur:
            referenced.add(key)
    report = GarbageReport()
    async for key in store.keys_older_than(cutoff):
        if key in referenced:
            report.kept += 1
            continue
        report.removed += 1
        if not dry_run:
            await store.delete(key)
    if isinstance(store, LocalBlobStore) and not dry_run:
        report.partial_uploads_removed = store.remove_stale_temp_files(cutoff)
    return report

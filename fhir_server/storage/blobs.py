"""Blob stores: where large Binary content lives, outside the resource tables (R4 binary.html).

A blob is immutable bytes under a key the store chooses. Keys are random (uuid4), not content
hashes: two requests uploading the same bytes get two blobs, so deleting the blob of a failed
request can never take away content another resource still refers to, and ``fhir-server blobs
gc`` can decide from a key alone (no reference counting). The SHA-256 is computed while the
bytes stream in and recorded on the resource (``services.binary``), not used as the key.

Key layout, the same in every store: ``ab/cd/abcd…`` (two levels of 256 shards from the uuid's
first hex digits), so no directory grows past a few thousand entries and a key can be copied
between stores as it is.

* ``LocalBlobStore(root)``: files under ``root`` (``FHIR_BLOB_DIR``, default
  ``<FHIR_DATA_DIR>/blobs``). Bytes go to ``root/tmp/<uuid>.part``, are fsynced, then renamed to
  their key (atomic on one filesystem): a reader sees a whole blob or none.
* ``S3BlobStore``: any S3-compatible store through aiobotocore (``pip install 'fhir-server[s3]'``);
  streamed in multipart uploads; credentials from the standard AWS chain (``AWS_ACCESS_KEY_ID``…).
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import anyio.to_thread

from fhir_server.errors import PayloadTooLarge

__all__ = ["BlobInfo", "BlobMissing", "BlobStore", "BlobTooLarge", "LocalBlobStore", "S3BlobStore", "new_key", "valid_key"]

_KEY = re.compile(r"[0-9a-f]{2}/[0-9a-f]{2}/[0-9a-f]{32}")
_WRITE_BATCH = 1024 * 1024  # bytes gathered before one write (and hash update) in a worker thread
_READ_CHUNK = 256 * 1024
_S3_PART = 8 * 1024 * 1024  # S3 multipart parts must be ≥ 5 MiB (all but the last)


class BlobTooLarge(PayloadTooLarge):
    """The content went over the size limit while streaming in; nothing was kept."""


class BlobMissing(Exception):
    """A key that the store does not hold (a bug or lost storage, never a client error)."""


@dataclass(frozen=True, slots=True)
class BlobInfo:
    key: str
    size: int
    sha256: str  # lowercase hex


class BlobStore(Protocol):
    async def put(self, chunks: AsyncIterable[bytes], *, max_bytes: int) -> BlobInfo:
        """Stream ``chunks`` into a new blob; ``BlobTooLarge`` (nothing kept) past ``max_bytes``."""
        ...

    async def open(self, key: str, start: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """The blob's bytes from ``start`` (``length`` of them, or to the end); ``BlobMissing`` at once."""
        ...

    async def delete(self, key: str) -> None:
        """Remove a blob; a missing one is not an error."""
        ...

    def keys_older_than(self, cutoff: datetime) -> AsyncIterator[str]:
        """Every key last written before ``cutoff`` (for garbage collection)."""
        ...

    async def close(self) -> None: ...


def new_key() -> str:
    h = uuid.uuid4().hex
    return f"{h[:2]}/{h[2:4]}/{h}"


def valid_key(key: str) -> bool:
    """Keys come from resource JSON: check their shape before they become a path or an S3 key."""
    return _KEY.fullmatch(key) is not None


def _checked(key: str) -> str:
    if not valid_key(key):
        raise BlobMissing(f"not a blob key: {key!r}")
    return key


async def _batches(chunks: AsyncIterable[bytes], size: int) -> AsyncIterator[bytes]:
    """Re-cut a byte stream into pieces of ``size`` (the last one shorter)."""
    buf = bytearray()
    async for chunk in chunks:
        buf += chunk
        while len(buf) >= size:
            yield bytes(buf[:size])
            del buf[:size]
    if buf:
        yield bytes(buf)


class LocalBlobStore:
    """Blobs as files in a local folder (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / _checked(key)

    async def put(self, chunks: AsyncIterable[bytes], *, max_bytes: int) -> BlobInfo:
        key = new_key()
        tmp = self.tmp / f"{uuid.uuid4().hex}.part"
        digest = hashlib.sha256()
        size = 0
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            # hashing and writing a batch in a worker thread keeps the event loop free
            # (hashlib releases the GIL on large buffers)
            def write(data: bytes) -> None:
                digest.update(data)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]

            async for batch in _batches(chunks, _WRITE_BATCH):
                size += len(batch)
                if size > max_bytes:
                    raise BlobTooLarge(f"The content is larger than the limit of {max_bytes} bytes")
                await anyio.to_thread.run_sync(write, batch)
            await anyio.to_thread.run_sync(os.fsync, fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        final = self.root / key
        try:
            await anyio.to_thread.run_sync(self._publish, tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return BlobInfo(key, size, digest.hexdigest())

    @staticmethod
    def _publish(tmp: Path, final: Path) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)  # atomic: readers see the whole blob or none
        dir_fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a crash once the row commits
        finally:
            os.close(dir_fd)

    async def open(self, key: str, start: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        path = self.path(key)
        try:
            f = await anyio.to_thread.run_sync(open, path, "rb")
        except FileNotFoundError:
            raise BlobMissing(f"blob {key} is not in {self.root}") from None
        return self._read(f, start, length)

    @staticmethod
    async def _read(f: Any, start: int, length: int | None) -> AsyncIterator[bytes]:
        try:
            if start:
                f.seek(start)
            left = length
            while left is None or left > 0:
                n = _READ_CHUNK if left is None else min(_READ_CHUNK, left)
                chunk = await anyio.to_thread.run_sync(f.read, n)
                if not chunk:
                    break
                if left is not None:
                    left -= len(chunk)
                yield chunk
        finally:
            f.close()

    async def delete(self, key: str) -> None:
        await anyio.to_thread.run_sync(lambda: self.path(key).unlink(missing_ok=True))

    async def keys_older_than(self, cutoff: datetime) -> AsyncIterator[str]:
        limit = cutoff.timestamp()
        for shard in sorted(self.root.glob("[0-9a-f][0-9a-f]/[0-9a-f][0-9a-f]")):
            for entry in await anyio.to_thread.run_sync(lambda s=shard: list(os.scandir(s))):
                key = f"{shard.parent.name}/{shard.name}/{entry.name}"
                if valid_key(key) and entry.stat().st_mtime < limit:
                    yield key

    def remove_stale_temp_files(self, cutoff: datetime) -> int:
        """Partial uploads left by a crash (an upload in progress keeps its file's mtime fresh)."""
        removed = 0
        for part in self.tmp.glob("*.part"):
            if part.stat().st_mtime < cutoff.timestamp():
                part.unlink(missing_ok=True)
                removed += 1
        return removed

    async def close(self) -> None:
        return None


class S3BlobStore:
    """Blobs in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, …) through aiobotocore.

    Not exercised by the test suite (no S3 there); it uses only ``create_multipart_upload``,
    ``upload_part``, ``complete/abort_multipart_upload``, ``get_object``, ``delete_object`` and
    ``list_objects_v2``.
    """

    def __init__(self, bucket: str, *, prefix: str = "", endpoint_url: str | None = None, region: str | None = None) -> None:
        try:
            from aiobotocore.session import get_session
        except ImportError as exc:  # pragma: no cover - depends on the optional extra
            raise RuntimeError("FHIR_BLOB_STORE=s3 needs the optional extra: pip install 'fhir-server[s3]'") from exc
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._context = get_session().create_client("s3", endpoint_url=endpoint_url, region_name=region)
        self._client: Any = None

    async def _s3(self) -> Any:
        if self._client is None:
            self._client = await self._context.__aenter__()
        return self._client

    async def put(self, chunks: AsyncIterable[bytes], *, max_bytes: int) -> BlobInfo:
        """One ``put_object`` for content under one part, else a multipart upload (aborted on failure)."""
        s3 = await self._s3()
        key = new_key()
        name = self.prefix + key
        digest = hashlib.sha256()
        size = 0
        batches = aiter(_batches(chunks, _S3_PART))

        async def next_batch() -> bytes | None:
            nonlocal size
            batch = await anext(batches, None)
            if batch is not None:
                size += len(batch)
                if size > max_bytes:
                    raise BlobTooLarge(f"The content is larger than the limit of {max_bytes} bytes")
                await anyio.to_thread.run_sync(digest.update, batch)
            return batch

        first = await next_batch() or b""
        second = await next_batch()
        if second is None:
            await s3.put_object(Bucket=self.bucket, Key=name, Body=first)
            return BlobInfo(key, size, digest.hexdigest())
        upload_id = (await s3.create_multipart_upload(Bucket=self.bucket, Key=name))["UploadId"]
        parts: list[dict[str, Any]] = []
        try:
            batch: bytes | None = first
            while batch is not None:
                number = len(parts) + 1
                part = await s3.upload_part(Bucket=self.bucket, Key=name, UploadId=upload_id, PartNumber=number, Body=batch)
                parts.append({"ETag": part["ETag"], "PartNumber": number})
                batch, second = (second, None) if second is not None else (await next_batch(), None)
            await s3.complete_multipart_upload(
                Bucket=self.bucket, Key=name, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
        except BaseException:
            await s3.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload_id)
            raise
        return BlobInfo(key, size, digest.hexdigest())

    async def open(self, key: str, start: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        s3 = await self._s3()
        extra = {}
        if start or length is not None:
            extra["Range"] = f"bytes={start}-{'' if length is None else start + length - 1}"
        try:
            obj = await s3.get_object(Bucket=self.bucket, Key=self.prefix + _checked(key), **extra)
        except s3.exceptions.NoSuchKey:
            raise BlobMissing(f"blob {key} is not in bucket {self.bucket}") from None
        return self._read(obj["Body"])

    @staticmethod
    async def _read(body: Any) -> AsyncIterator[bytes]:
        async with body as stream:
            async for chunk in stream.iter_chunks(_READ_CHUNK):
                yield chunk

    async def delete(self, key: str) -> None:
        s3 = await self._s3()
        await s3.delete_object(Bucket=self.bucket, Key=self.prefix + _checked(key))

    async def keys_older_than(self, cutoff: datetime) -> AsyncIterator[str]:
        s3 = await self._s3()
        paginator = s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", []):
                key = item["Key"][len(self.prefix):]
                if valid_key(key) and item["LastModified"].astimezone(UTC) < cutoff:
                    yield key

    async def close(self) -> None:
        if self._client is not None:
            await self._context.__aexit__(None, None, None)
            self._client = None


def open_blob_store(settings: Any) -> BlobStore:
    """The store the settings name (``FHIR_BLOB_STORE``: ``local`` or ``s3``)."""
    if settings.blob_store == "s3":
        if not settings.s3_bucket:
            raise RuntimeError("FHIR_BLOB_STORE=s3 needs FHIR_S3_BUCKET")
        return S3BlobStore(
            settings.s3_bucket, prefix=settings.s3_prefix, endpoint_url=settings.s3_endpoint_url, region=settings.s3_region
        )
    return LocalBlobStore(settings.blob_dir or Path(settings.data_dir) / "blobs")


"""Rate limits per user, per client and per IP, by class of request (README "CORS and rate limits").

Classes: ``read`` (read, vread, history, metadata), ``search`` (type/system search, ``_search``),
``write`` (create, update, patch, delete, transactions, other POSTs), ``bulk`` (``$export``,
``$import``, ``$reindex``), ``auth`` (the OAuth endpoints under ``/auth``). Each class has a
fixed-window limit (``FHIR_RATE_LIMITS``, the ``limits`` library's notation, e.g.
``write=3000/minute``) applied separately to the caller's user (tenant + token subject) and its
OAuth client, or, for a caller without a token, to its IP. Over the limit: ``429`` with ``Retry-After`` and an OperationOutcome
(``throttled``); nothing is done. The counters live in PostgreSQL (shared by every worker process
and host) unless ``FHIR_RATE_LIMIT_STORAGE`` names ``memory`` (per process) or a ``limits``
storage URI such as ``async+redis://host:6379``.

The middleware sits inside authentication, so a user is known; requests refused with 401 are
not counted (they cost no database work). The client IP is the socket peer; behind a proxy, let
uvicorn rewrite it (``UVICORN_OPTIONS="--forwarded-allow-ips=10.0.0.5"``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItem, parse
from limits.aio.strategies import FixedWindowRateLimiter
from limits.storage import storage_from_string

from fhir_server.api.errors import send_outcome
from fhir_server.errors import Issue
from fhir_server.ratelimit.storage import PostgresStorage

log = logging.getLogger(__name__)

CLASSES = ("read", "search", "write", "bulk", "auth")
_BULK_OPS = frozenset({"$export", "$import", "$reindex"})
_CLEANUP_SECONDS = 60.0


def parse_limits(text: str) -> dict[str, RateLimitItem]:
    """``"read=6000/minute;write=3000/minute"`` → {class: limit}; unknown classes are an error."""
    out: dict[str, RateLimitItem] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in CLASSES:
            raise ValueError(f"FHIR_RATE_LIMITS: '{part}' is not <class>=<limit> with a class of {', '.join(CLASSES)}")
        out[name] = parse(value.strip())
    return out


def classify(method: str, path: str) -> str:
    if path.startswith("/auth/"):
        return "auth"
    if not path.startswith("/fhir"):
        return "read"
    from fhir_server.api.routes import shape_of

    shape, params = shape_of(path)
    if shape.endswith("$"):
        return "bulk" if params[-1] in _BULK_OPS else ("read" if method in ("GET", "HEAD") else "write")
    if method in ("GET", "HEAD"):
        return "search" if shape in ("", "T") else "read"
    if shape == "T/_search":
        return "search"
    return "write"


class Backend:
    async def hit(self, item: RateLimitItem, keys: list[str]) -> float | None:
        """Count one hit on every key; None if all are within ``item``, else seconds to wait."""
        raise NotImplementedError

    async def housekeeping(self) -> None:
        return None


@dataclass(slots=True)
class _Counter:
    """What this process knows of one key's window: the shared count at the last exchange with
    PostgreSQL, and the hits counted here since."""

    window_end: float  # epoch seconds
    shared: int
    expiry: float  # the limit's window length in seconds
    pending: int = 0


class PostgresBackend(Backend):
    """Counters in PostgreSQL, exchanged only when it matters.

    Far from a limit (the shared count this process last saw, plus its own unflushed hits, below
    ``LOCAL_SHARE`` of it) a hit is counted in memory and sent with the next flush (every
    ``FLUSH_SECONDS``, one statement for all keys); a process holds at most 1/``LOCAL_QUOTA`` of
    the limit unflushed, so with fewer than 10 processes the true count is still under the limit
    when any of them stops counting locally. Near the limit, on a key's first hit in a window, and
    for limits under ``LOCAL_QUOTA`` per window, every hit goes to PostgreSQL and its answer decides. So a busy user costs one statement per flush instead of one per request
    (measured: creates 627/s with an upsert per request), while decisions near a limit stay exact.
    Unflushed hits of a process that dies are lost (at most ``FLUSH_SECONDS`` of them).
    """

    LOCAL_SHARE = 0.5
    LOCAL_QUOTA = 20
    FLUSH_SECONDS = 0.2

    def __init__(self, storage: PostgresStorage) -> None:
        self.storage = storage
        self.counters: dict[str, _Counter] = {}
        self._flush_task: asyncio.Task[None] | None = None

    async def hit(self, item: RateLimitItem, keys: list[str]) -> float | None:
        now = time.time()
        budget = item.amount * self.LOCAL_SHARE
        quota = item.amount // self.LOCAL_QUOTA  # unflushed hits one process may hold for a key
        exchange = []
        for key in keys:
            c = self.counters.get(key)
            if c is not None and c.window_end > now and c.pending < quota and c.shared + c.pending + 1 <= budget:
                c.pending += 1
            else:
                exchange.append(key)
        if exchange:
            amounts = [1 + (self.counters[k].pending if k in self.counters and self.counters[k].window_end > now else 0)
                       for k in exchange]
            counts = await self.storage.incr_many(exchange, [float(item.get_expiry())] * len(exchange), amounts)
            over = []
            for key, (count, end) in counts.items():
                self.counters[key] = _Counter(end, count, float(item.get_expiry()))
                if count > item.amount:
                    over.append(end)
            if over:
                return max(over) - now
        if any(k not in exchange for k in keys) and self._flush_task is None:
            self._flush_task = asyncio.get_running_loop().create_task(self._flush())
        return None

    async def _flush(self) -> None:
        try:
            await asyncio.sleep(self.FLUSH_SECONDS)
            now = time.time()
            pending = {k: c for k, c in self.counters.items() if c.pending and c.window_end > now}
            if pending:
                keys = list(pending)
                amounts = [pending[k].pending for k in keys]
                for k in keys:
                    pending[k].pending = 0
                counts = await self.storage.incr_many(keys, [pending[k].expiry for k in keys], amounts)
                for key, (count, end) in counts.items():
                    c = self.counters.get(key)
                    if c is not None:
                        c.shared, c.window_end = count, end
            stale = [k for k, c in self.counters.items() if c.window_end <= now and not c.pending]
            for k in stale:
                del self.counters[k]
        except Exception:
            log.warning("rate limit flush failed", exc_info=True)
        finally:
            self._flush_task = None

    async def housekeeping(self) -> None:
        await self.storage.remove_expired()


class LimitsBackend(Backend):
    """Any storage of the ``limits`` library (memory, Redis...), one call per key."""

    def __init__(self, uri: str) -> None:
        self.limiter = FixedWindowRateLimiter(storage_from_string(uri))

    async def hit(self, item: RateLimitItem, keys: list[str]) -> float | None:
        waits = []
        for key in keys:
            if not await self.limiter.hit(item, key):
                stats = await self.limiter.get_window_stats(item, key)
                waits.append(stats.reset_time - time.time())
        return max(waits) if waits else None


@dataclass(frozen=True, slots=True)
class RatePolicy:
    limits: dict[str, RateLimitItem]

    @classmethod
    def from_settings(cls, settings: Any) -> RatePolicy | None:
        if settings.rate_limit_storage == "off":
            return None
        return cls(parse_limits(settings.rate_limits))


def make_backend(settings: Any, db: Any) -> Backend | None:
    kind = settings.rate_limit_storage
    if kind == "off":
        return None
    if kind == "postgresql":
        return PostgresBackend(PostgresStorage(db))
    if kind == "memory":
        return LimitsBackend("async+memory://")
    return LimitsBackend(kind)


class RateLimit:
    def __init__(self, app: Any, *, policy: RatePolicy | None) -> None:
        self.app = app
        self.policy = policy
        self._last_cleanup = time.monotonic()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self.policy is None or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        method = "GET" if scope["method"] == "HEAD" else scope["method"]
        cls = classify(method, path)
        item = self.policy.limits.get(cls)
        backend: Backend | None = getattr(scope["app"].state, "rate_limiter", None)
        if item is None or backend is None:
            await self.app(scope, receive, send)
            return
        keys = _keys(scope, cls, item)
        try:
            wait = await backend.hit(item, keys)
        except Exception:  # the limiter's storage failing must not take the API down
            log.warning("rate limiter unavailable; request let through", exc_info=True)
            wait = None
        if time.monotonic() - self._last_cleanup > _CLEANUP_SECONDS:
            self._last_cleanup = time.monotonic()
            asyncio.get_running_loop().create_task(_quietly(backend.housekeeping()))
        if wait is not None:
            await _too_many(scope, send, cls, item, wait)
            return
        await self.app(scope, receive, send)


def _keys(scope: dict[str, Any], cls: str, item: RateLimitItem) -> list[str]:
    """Who the hit counts against: an authenticated caller's user (tenant + subject) and OAuth
    client; a caller without a token (login and token endpoints, public paths, development mode)
    its IP. Authenticated traffic is not limited by IP: a hospital's users often share one NAT
    address."""
    principal = scope.get("state", {}).get("principal")
    if principal is None:
        client = scope.get("client")
        return [item.key_for(cls, "ip", client[0] if client else "unknown")]
    keys = [item.key_for(cls, "user", principal.tenant, principal.subject)]
    if principal.client_id:
        keys.append(item.key_for(cls, "client", principal.tenant, principal.client_id))
    return keys


async def _quietly(coro: Any) -> None:
    try:
        await coro
    except Exception:
        log.warning("rate limit housekeeping failed", exc_info=True)


async def _too_many(scope: dict[str, Any], send: Any, cls: str, item: RateLimitItem, wait: float) -> None:
    retry = max(1, math.ceil(wait))
    issue = Issue("error", "throttled", f"Too many {cls} requests (limit {item}); retry after {retry} s")
    await send_outcome(scope, send, 429, [issue], {"Retry-After": str(retry)})

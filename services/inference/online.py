"""Reads the online features of a request (or a batch) in one pipelined Redis round trip.

Redis trouble never fails a request: the read has a small time budget, and after a failure the
reader serves declared defaults for `retry_s` before trying again, so a dead Redis costs one slow
request per interval, not one per request. An optional TTL cache spares Redis hot entities.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cachetools import TTLCache

from services.inference import metrics
from services.inference.resp import RespClient, RespError
from streams.features.keys import feature_key
from streams.runtime.logging import get_logger

log = get_logger(__name__)

EntityRef = tuple[str, str]  # (entity name, id)
Hash = dict[bytes, bytes]


@dataclass
class Fetched:
    """Raw hashes by entity ref (empty when the entity has none); `available` is False when Redis failed."""

    hashes: dict[EntityRef, Hash]
    available: bool


class OnlineFeatures:
    """Async reader of `feat:{entity}:{id}` hashes in the active namespace."""

    def __init__(self, redis_url: str, namespace: Callable[[], str], *, timeout_ms: float = 50.0,
                 retry_s: float = 1.0, cache_ttl_ms: float = 0.0, cache_size: int = 100_000):
        self.client = RespClient(redis_url, timeout_ms / 1000.0)
        self._namespace = namespace
        self._retry_s = retry_s
        self._down_until = 0.0
        self._cache: TTLCache | None = TTLCache(cache_size, cache_ttl_ms / 1000.0) if cache_ttl_ms > 0 else None

    async def fetch(self, refs: Iterable[EntityRef]) -> Fetched:
        wanted = list(dict.fromkeys(refs))
        hashes: dict[EntityRef, Hash] = {}
        if self._cache is not None:
            for ref in wanted:
                hit = self._cache.get(ref)
                if hit is not None:
                    hashes[ref] = hit
            metrics.CACHE.labels("hit").inc(len(hashes))
            metrics.CACHE.labels("miss").inc(len(wanted) - len(hashes))
            wanted = [ref for ref in wanted if ref not in hashes]
        if not wanted:
            return Fetched(hashes, True)
        if time.monotonic() < self._down_until:
            return Fetched(hashes, False)
        prefix = self._namespace()
        started = time.perf_counter()
        try:
            results = await self.client.pipeline([("HGETALL", feature_key(e, i, prefix)) for e, i in wanted])
        except RespError as exc:
            if time.monotonic() >= self._down_until:
                log.warning("redis unavailable, serving declared defaults", error=str(exc), retry_s=self._retry_s)
            self._down_until = time.monotonic() + self._retry_s
            return Fetched(hashes, False)
        metrics.FEATURE_FETCH.observe(time.perf_counter() - started)
        for ref, flat in zip(wanted, results):
            pairs = iter(flat)
            raw = dict(zip(pairs, pairs))  # RESP2 HGETALL: [field, value, field, value, ...]
            hashes[ref] = raw
            if self._cache is not None:
                self._cache[ref] = raw
        return Fetched(hashes, True)

    async def ping(self) -> bool:
        try:
            return (await self.client.pipeline([("PING",)]))[0] in (b"PONG", "PONG")
        except RespError:
            return False

    async def close(self) -> None:
        await self.client.close()

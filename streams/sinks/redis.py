"""Online feature writes: one pipelined compare-and-set per entity hash per micro-batch.

A write carries the event time it reflects (`_ts`); the Lua script refuses it when the hash already
reflects a later event time (millisecond compare, atomic), so a replay, a restarted worker or a slow
one can never move a feature backwards. Values are absolute, never increments: replaying converges.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import hiredis
import orjson
import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from streams.features.definitions import ENTITIES, features_of
from streams.features.keys import TS_FIELD, encode_value, feature_key
from streams.features.shard import EntityWrites
from streams.flows import metrics
from streams.runtime.logging import get_logger

log = get_logger(__name__)

# KEYS[1] hash; ARGV: ts, ttl_ms, JSON [[field, value, ...], [field to delete, ...]] (all strings).
# One JSON argument per key keeps client-side packing cheap; cjson ships with Redis and Valkey.
CAS_SCRIPT = f"""
local cur = redis.call('HGET', KEYS[1], '{TS_FIELD}')
if cur and tonumber(cur) > tonumber(ARGV[1]) then return 0 end
local p = cjson.decode(ARGV[3])
redis.call('HSET', KEYS[1], '{TS_FIELD}', ARGV[1], unpack(p[1]))
if #p[2] > 0 then redis.call('HDEL', KEYS[1], unpack(p[2])) end
local ttl = tonumber(ARGV[2])
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
return 1
"""

_NAMES = {e.name: [f.name for f in features_of(e)] for e in ENTITIES}
_TTL_MS = {e.name: e.ttl_s * 1000 for e in ENTITIES}


class FeatureWriter:
    """Writes `EntityWrites` to Redis with the CAS script, retrying until Redis takes them."""

    def __init__(self, url: str, namespace: str = "", max_retry_s: float | None = None):
        self._client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
        self._namespace = namespace
        self._sha: bytes | None = None
        self._max_retry_s = max_retry_s

    def write(self, batches: Iterable[EntityWrites]) -> tuple[int, int]:
        """Write every row; returns (applied, refused-as-stale)."""
        batches = [b for b in batches if b.rows]
        if not batches:
            return 0, 0
        started = time.monotonic()
        delay = 0.05
        while True:
            try:
                results = self._write_once(batches)
                break
            except redis.RedisError as exc:
                metrics.REDIS_ERRORS.inc()
                if self._max_retry_s is not None and time.monotonic() - started > self._max_retry_s:
                    raise
                log.warning("redis write failed; retrying", error=str(exc), retry_in_s=delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        metrics.REDIS_WRITE_SECONDS.observe(time.monotonic() - started)
        now_ms = time.time() * 1000
        applied = stale = 0
        pos = 0
        for batch in batches:
            n = len(batch.rows)
            ok = sum(1 for r in results[pos:pos + n] if r == 1)
            pos += n
            applied += ok
            stale += n - ok
            metrics.REDIS_KEYS_WRITTEN.labels(batch.entity).inc(ok)
            if n - ok:
                metrics.REDIS_STALE_WRITES.labels(batch.entity).inc(n - ok)
            if batch.max_kafka_ts:
                metrics.FRESHNESS_SECONDS.observe(max(0.0, (now_ms - batch.max_kafka_ts) / 1000))
        return applied, stale

    def _write_once(self, batches: list[EntityWrites]) -> list:
        # Hand-packed EVALSHA pipeline (hiredis packs in C): redis-py's per-command machinery
        # cost more than the Lua script itself at tens of thousands of keys per second.
        if self._sha is None:
            self._sha = self._client.script_load(CAS_SCRIPT).encode()
        sha, ns = self._sha, self._namespace
        commands = []
        for batch in batches:
            names, ttl = _NAMES[batch.entity], _TTL_MS[batch.entity]
            for eid, ts, values in batch.rows:
                flat: list[str] = []
                for name, value in values.items():
                    flat.append(name)
                    flat.append(encode_value(value))
                payload = orjson.dumps([flat, [n for n in names if n not in values]])
                key = feature_key(batch.entity, eid, ns)
                commands.append(hiredis.pack_command((b"EVALSHA", sha, b"1", key, str(ts), str(ttl), payload)))
        pool = self._client.connection_pool
        conn = pool.get_connection()
        try:
            conn.send_packed_command([b"".join(commands)])
            results = []
            error: Exception | None = None
            for _ in commands:
                try:
                    results.append(conn.read_response())
                except redis.ResponseError as exc:  # keep reading so the connection stays in sync
                    error = error or exc
            if error is not None:
                if isinstance(error, redis.exceptions.NoScriptError):
                    self._sha = None  # Redis restarted and lost the script: load it and redo the batch
                raise error
            return results
        except BaseException:
            conn.disconnect()
            raise
        finally:
            pool.release(conn)

    def close(self) -> None:
        self._client.close()


class _Partition(StatelessSinkPartition[EntityWrites]):
    def __init__(self, url: str, namespace: str):
        self._writer = FeatureWriter(url, namespace)

    def write_batch(self, items: list[EntityWrites]) -> None:
        self._writer.write(items)

    def close(self) -> None:
        self._writer.close()


class RedisFeatureSink(DynamicSink[EntityWrites]):
    """Bytewax sink: every worker writes its shards' values straight into Redis."""

    def __init__(self, url: str, namespace: str = ""):
        self._url, self._namespace = url, namespace

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Partition:
        return _Partition(self._url, self._namespace)


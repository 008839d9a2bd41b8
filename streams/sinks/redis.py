"""Online feature writes: one pipelined compare-and-set per entity hash per micro-batch.

A write carries the event time it reflects (`_ts`); the Lua script refuses it when the hash already
reflects a later event time (millisecond compare, atomic), so a replay, a restarted worker or a slow
one can never move a feature backwards. Values are absolute, never increments: replaying converges.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import redis
from bytewax.outputs import DynamicSink, StatelessSinkPartition

from streams.features.definitions import ENTITIES, features_of
from streams.features.keys import TS_FIELD, encode_value, feature_key
from streams.features.shard import EntityWrites
from streams.flows import metrics
from streams.runtime.logging import get_logger

log = get_logger(__name__)

# KEYS[1] hash; ARGV: ts, ttl_ms, n_pairs, field/value pairs..., fields to delete...
CAS_SCRIPT = f"""
local cur = redis.call('HGET', KEYS[1], '{TS_FIELD}')
if cur and tonumber(cur) > tonumber(ARGV[1]) then return 0 end
local n = tonumber(ARGV[3])
local args = {{'{TS_FIELD}', ARGV[1]}}
for i = 4, 3 + 2 * n do args[#args + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(args))
if #ARGV > 3 + 2 * n then redis.call('HDEL', KEYS[1], unpack(ARGV, 4 + 2 * n, #ARGV)) end
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
        self._cas = self._client.register_script(CAS_SCRIPT)
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
        pipe = self._client.pipeline(transaction=False)
        for batch in batches:
            names, ttl = _NAMES[batch.entity], _TTL_MS[batch.entity]
            for eid, ts, values in batch.rows:
                args: list = [ts, ttl, len(values)]
                for name, value in values.items():
                    args.append(name)
                    args.append(encode_value(value))
                args.extend(n for n in names if n not in values)
                self._cas(keys=[feature_key(batch.entity, eid, self._namespace)], args=args, client=pipe)
        return pipe.execute()

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


"""Online feature writes: a compare-and-set per entity hash per micro-batch, pipelined, many per script call.

A write carries the event time it reflects (`_ts`); the Lua script refuses it when the hash already
reflects a later event time (millisecond compare, atomic), so a replay, a restarted worker or a slow
one can never move a feature backwards. Values are absolute, never increments: replaying converges.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from functools import partial
from typing import Any

import hiredis
import orjson
import redis

from streams.features.definitions import ENTITIES, features_of
from streams.features.keys import TS_FIELD, encode_value, feature_key
from streams.features.namespaces import write_targets
from streams.features.shard import ENGINE, EntityWrites
from streams.features.state import native_state
from streams.flows import metrics
from streams.runtime.logging import get_logger
from streams.sinks.background import BackgroundWriter, ShardedSink

log = get_logger(__name__)

# KEYS: the hashes; ARGV[1]: JSON, per key [ts, ttl_ms, [field, value, ...], [field to delete, ...]] (ts and
# values as strings: stored exactly as sent). Returns 1 (written) or 0 (refused: stale) per key.
# One call carries up to ROWS_PER_CALL keys. Measured per key, one call per key cost the flow 12-15 us of CPU
# and Redis 19-21 us; 50 keys per call, 7-8 and 15-18. Most of the rest is the script's redis.calls: plain
# HSET + PEXPIRE, without the compare, cost Redis ~7 us.
CAS_SCRIPT = """
local rows = cjson.decode(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  local row = rows[i]
  local cur = redis.call('HGET', key, '{ts}')
  if cur and tonumber(cur) > tonumber(row[1]) then
    out[i] = 0
  else
    redis.call('HSET', key, '{ts}', row[1], unpack(row[3]))
    if #row[4] > 0 then redis.call('HDEL', key, unpack(row[4])) end
    if row[2] > 0 then redis.call('PEXPIRE', key, row[2]) end
    out[i] = 1
  end
end
return out
""".replace("{ts}", TS_FIELD)
# Keys per script call: Redis runs a call without interruption, and serving reads the same Redis; 50 keys
# hold it ~0.4 ms. (Multi-key calls need one Redis, as this client is; a Redis Cluster writer would group
# keys by hash slot.)
ROWS_PER_CALL = 50
CALLS_PER_SEND = 20  # script calls sent together (~1,000 keys, ~8 ms of Redis) while the next are packed

_NAMES = {e.name: [f.name for f in features_of(e)] for e in ENTITIES}
_TTL_MS = {e.name: e.ttl_s * 1000 for e in ENTITIES}


def _encode_rows(rows: list[tuple[str, int, dict[str, Any]]], names: list[str], ttl_ms: int) -> list[tuple]:
    """Per row: (event time, TTL, [field, value, ...], [absent feature, ...]), values as Redis stores them."""
    out = []
    for _, ts, values in rows:
        flat: list[str] = []
        for name, value in values.items():
            flat.append(name)
            flat.append(encode_value(value))
        out.append((str(ts), ttl_ms, flat, [n for n in names if n not in values]))
    return out


def _encode_payload(rows: list[tuple[str, int, dict[str, Any]]], names: list[str], ttl_ms: int) -> bytes:
    """The script's ARGV[1] for `rows`."""
    return orjson.dumps(_encode_rows(rows, names, ttl_ms))


def _pack_cas_call(sha: bytes, rows: list[tuple[str, int, dict[str, Any]]], prefix: str, payload: bytes) -> bytes:
    """One EVALSHA of the script for `rows`, whose keys are `prefix` + entity id, in RESP."""
    return hiredis.pack_command((b"EVALSHA", sha, str(len(rows)), *[prefix + eid for eid, _, _ in rows], payload))


# The same two, compiled, with the flow's engine: the Redis writer's thread holds the GIL while it packs (time the
# flow waits for), and the compiled ones write the bytes straight from the values, without a string per value.
if ENGINE == "native":
    encode_payload, pack_cas_call = native_state.encode_payload, native_state.pack_cas_call
else:
    encode_payload, pack_cas_call = _encode_payload, _pack_cas_call


class FeatureWriter:
    """Writes `EntityWrites` to Redis with the CAS script, retrying until Redis takes them."""

    def __init__(self, url: str, namespace: str | None = "", max_retry_s: float | None = None):
        """`namespace` is a key prefix ('' = default keys); None follows the active namespace and any
        namespace being rebuilt (`namespaces.write_targets`), re-read every second."""
        self._client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
        self._follow = namespace is None
        self._targets: list[str] = [] if namespace is None else [namespace]
        self._targets_at = 0.0
        self._sha: bytes | None = None
        self._max_retry_s = max_retry_s

    def _refresh_targets(self) -> list[str]:
        if self._follow and time.monotonic() - self._targets_at > 1.0:
            self._targets = write_targets(self._client)
            self._targets_at = time.monotonic()
        return self._targets

    def write(self, batches: Iterable[EntityWrites]) -> tuple[int, int]:
        """Write the last row of each key the batches hold; returns (applied, refused-as-stale) of those."""
        batches = [b for b in batches if b.rows]
        if not batches:
            return 0, 0
        latest = latest_rows(batches)
        started = time.monotonic()
        delay = 0.05
        while True:
            try:
                results = self._write_once(latest)
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
        for batch in latest:
            n = len(batch.rows)
            ok = sum(1 for r in results[pos:pos + n] if r == 1)
            pos += n
            applied += ok
            stale += n - ok
            metrics.REDIS_KEYS_WRITTEN.labels(batch.entity).inc(ok)
            if n - ok:
                metrics.REDIS_STALE_WRITES.labels(batch.entity).inc(n - ok)
        for batch in batches:  # each batch's events are reflected now, whether or not its rows were superseded
            if batch.max_kafka_ts:
                metrics.FRESHNESS_SECONDS.observe(max(0.0, (now_ms - batch.max_kafka_ts) / 1000))
        return applied, stale

    def _write_once(self, batches: list[EntityWrites]) -> list:
        # Hand-packed EVALSHA pipeline (hiredis packs in C): redis-py's per-command machinery
        # cost more than the Lua script itself at tens of thousands of keys per second.
        if self._sha is None:
            self._sha = self._client.script_load(CAS_SCRIPT).encode()
        sha, targets = self._sha, self._refresh_targets()
        pool = self._client.connection_pool
        conn = pool.get_connection()
        try:
            # Sent as they are packed, CALLS_PER_SEND at a time: Redis runs the first calls while the rest are packed.
            sent = 0
            pending: list[bytes] = []
            for batch in batches:
                names, ttl = _NAMES[batch.entity], _TTL_MS[batch.entity]
                prefixes = [feature_key(batch.entity, "", ns) for ns in targets]
                for start in range(0, len(batch.rows), ROWS_PER_CALL):
                    chunk = batch.rows[start:start + ROWS_PER_CALL]
                    payload = encode_payload(chunk, names, ttl)
                    pending.extend(pack_cas_call(sha, chunk, prefix, payload) for prefix in prefixes)
                    if len(pending) >= CALLS_PER_SEND:
                        conn.send_packed_command([b"".join(pending)])
                        sent, pending = sent + len(pending), []
            if pending:
                conn.send_packed_command([b"".join(pending)])
                sent += len(pending)
            results: list = []
            error: Exception | None = None
            for i in range(sent):
                try:
                    response = conn.read_response()
                    if i % len(targets) == 0:  # count outcomes once, by the first target
                        results.extend(response)
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


def latest_rows(batches: list[EntityWrites]) -> list[EntityWrites]:
    """Per entity, one row per id: its last. Batches that queued up behind a write go out together, and a later row
    of an entity supersedes an earlier one (its event time is not older and its values are the state's later ones),
    so the script would have left the key as the last row alone leaves it; each row costs Redis 7-9 us."""
    if len(batches) == 1:
        return batches
    by_entity: dict[str, dict[str, tuple[str, int, dict[str, Any]]]] = {}
    newest: dict[str, int] = {}
    for batch in batches:
        rows = by_entity.setdefault(batch.entity, {})
        for row in batch.rows:
            rows[row[0]] = row
        newest[batch.entity] = max(newest.get(batch.entity, 0), batch.max_kafka_ts)
    return [EntityWrites(entity, list(rows.values()), newest[entity]) for entity, rows in by_entity.items()]


def _new_writer(url: str, namespace: str | None) -> BackgroundWriter[tuple[str, EntityWrites]]:
    target = FeatureWriter(url, namespace)
    return BackgroundWriter(lambda items: target.write(w for _, w in items), "redis-writer", target.close)


class RedisFeatureSink(ShardedSink[EntityWrites]):
    """Feature writes on a thread of their own, so the flow computes the next batch while Redis works; batches
    that queued up meanwhile go out as one pipeline."""

    def __init__(self, url: str, shard_keys: list[str], namespace: str | None = None):
        super().__init__(shard_keys, ("redis", url, namespace), partial(_new_writer, url, namespace))

"""Online-store namespaces: build a full set of feature keys aside, then switch serving to it atomically.

A replay writes into `ns:{name}:feat:…` while serving keeps reading the active namespace; only a
namespace whose build completed can be promoted, and promotion is one `SET` of the active-namespace
key (readers see the old or the new set, never a mix). While a namespace is being built from the
log, the live flow writes its updates there too, so nothing that happens during the rebuild is
missing when it is promoted. Compare-and-set on `_ts` lets both writers converge.
"""

from __future__ import annotations

import re
import time
from typing import Any

import redis

from schemas.errors import ReplayError
from streams.features.keys import (
    ACTIVE_NAMESPACE_KEY,
    DEFAULT_NAMESPACE,
    NAMESPACES_KEY,
    feature_key,
    namespace_meta_key,
    namespace_prefix,
)

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
BUILDING, COMPLETE, FAILED, RETIRED = "building", "complete", "failed", "retired"


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ReplayError(f"namespace {name!r} is not valid: use 1-63 lowercase letters, digits, '-' or '_'")
    return name


def active(client: redis.Redis) -> str:
    """The namespace serving reads (`default` until something was promoted)."""
    raw = client.get(ACTIVE_NAMESPACE_KEY)
    return raw.decode() if raw else DEFAULT_NAMESPACE


def describe(client: redis.Redis, name: str) -> dict[str, str] | None:
    raw = client.hgetall(namespace_meta_key(name))
    return {k.decode(): v.decode() for k, v in raw.items()} or None


def all_namespaces(client: redis.Redis) -> dict[str, dict[str, str]]:
    """Every namespace with its metadata (the default one included)."""
    names = sorted(m.decode() for m in client.smembers(NAMESPACES_KEY))
    out = {DEFAULT_NAMESPACE: describe(client, DEFAULT_NAMESPACE) or {"status": "live"}}
    for name in names:
        out[name] = describe(client, name) or {"status": "unknown"}
    current = active(client)
    for name, meta in out.items():
        meta["active"] = "yes" if name == current else "no"
    return out


def exists(client: redis.Redis, name: str) -> bool:
    return bool(client.exists(namespace_meta_key(name))) or any(
        True for _ in client.scan_iter(feature_key("*", "*", namespace_prefix(name)), count=1000))


def begin(client: redis.Redis, name: str, info: dict[str, Any], *, overwrite: bool, follow: bool) -> None:
    """Mark `name` as being built; refuses an existing namespace unless `overwrite`, and never the active one."""
    check_name(name)
    if name == DEFAULT_NAMESPACE or name == active(client):
        raise ReplayError(f"namespace {name!r} is the one serving reads now; rebuild into a new namespace "
                          "and promote it instead")
    if not overwrite and exists(client, name):
        meta = describe(client, name) or {}
        raise ReplayError(f"namespace {name!r} already exists (status {meta.get('status', 'unknown')}); choose "
                          f"another --namespace, pass --overwrite to rebuild it in place, or "
                          f"`streamml replay drop {name}` first")
    _delete_keys(client, name)  # an overwrite starts clean: no entity left over from the last build
    client.delete(namespace_meta_key(name))
    client.hset(namespace_meta_key(name), mapping={**{k: str(v) for k, v in info.items()}, "status": BUILDING,
                                                  "follow": "1" if follow else "0",
                                                  "started_ms": str(int(time.time() * 1000))})
    client.sadd(NAMESPACES_KEY, name)


def finish(client: redis.Redis, name: str, stats: dict[str, Any]) -> None:
    client.hset(namespace_meta_key(name), mapping={**{k: str(v) for k, v in stats.items()}, "status": COMPLETE,
                                                  "finished_ms": str(int(time.time() * 1000))})


def fail(client: redis.Redis, name: str, reason: str) -> None:
    client.hset(namespace_meta_key(name), mapping={"status": FAILED, "error": reason[:500], "follow": "0",
                                                  "finished_ms": str(int(time.time() * 1000))})


def promote(client: redis.Redis, name: str) -> str:
    """Switch serving to `name` atomically; returns the previously active namespace (now retired)."""
    check_name(name)
    meta_key = namespace_meta_key(name)
    with client.pipeline() as pipe:
        while True:
            try:
                pipe.watch(meta_key, ACTIVE_NAMESPACE_KEY)
                previous = active(pipe)
                if name == previous:
                    raise ReplayError(f"namespace {name!r} is already active")
                status = (describe(pipe, name) or {}).get("status") if name != DEFAULT_NAMESPACE else COMPLETE
                if status is None:
                    raise ReplayError(f"no namespace {name!r}; `streamml replay list` shows the namespaces")
                if status != COMPLETE:
                    raise ReplayError(f"namespace {name!r} is {status}, not complete: only a finished rebuild can be "
                                      f"promoted. Re-run the replay (--namespace {name} --overwrite)")
                pipe.multi()
                pipe.set(ACTIVE_NAMESPACE_KEY, name)
                pipe.hset(meta_key, mapping={"status": COMPLETE, "follow": "0",
                                             "promoted_ms": str(int(time.time() * 1000))})
                pipe.hset(namespace_meta_key(previous), mapping={"status": RETIRED,
                                                                 "retired_ms": str(int(time.time() * 1000))})
                pipe.execute()
                return previous
            except redis.WatchError:
                continue


def drop(client: redis.Redis, name: str) -> int:
    """Delete a namespace's keys and metadata; refuses the active one. Returns keys deleted."""
    check_name(name)
    if name == DEFAULT_NAMESPACE:
        raise ReplayError("the default namespace (the plain feat: keys) cannot be dropped")
    if name == active(client):
        raise ReplayError(f"namespace {name!r} is serving reads; promote another one before dropping it")
    client.hset(namespace_meta_key(name), mapping={"status": FAILED, "follow": "0"})  # stop live writes first
    deleted = _delete_keys(client, name)
    client.delete(namespace_meta_key(name))
    client.srem(NAMESPACES_KEY, name)
    return deleted


def _delete_keys(client: redis.Redis, name: str) -> int:
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(feature_key("*", "*", namespace_prefix(name)), count=2000):
        batch.append(key)
        if len(batch) >= 2000:
            deleted += client.unlink(*batch)
            batch = []
    if batch:
        deleted += client.unlink(*batch)
    return deleted


def write_targets(client: redis.Redis) -> list[str]:
    """Key prefixes the live flow writes to: the active namespace plus any being rebuilt from the log."""
    targets = [active(client)]
    names = sorted(m.decode() for m in client.smembers(NAMESPACES_KEY))
    pipe = client.pipeline(transaction=False)
    for name in names:
        pipe.hmget(namespace_meta_key(name), "status", "follow")
    for name, (status, follow) in zip(names, pipe.execute()):
        if status == BUILDING.encode() and follow == b"1" and name not in targets:
            targets.append(name)
    return [namespace_prefix(n) for n in targets]

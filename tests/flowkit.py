"""Helpers for feature-flow tests: generated events, publishing, reading topics back, running the flow."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis as redis_lib
from confluent_kafka import Consumer, Producer, TopicPartition

from schemas.registry import RegistryClient
from schemas.serde import TopicSerde
from schemas.topics import CDC_ITEMS, CDC_USERS, CLICKSTREAM, TopicSpec, all_topic_names
from streams.features.keys import decode_value, feature_key
from streams.kafka.admin import ensure_topics

T0 = 1_763_800_000_000  # 2025-11-22, safely in the past


def _source(table: str, ts: int, lsn: int) -> dict[str, Any]:
    return {"version": "test", "connector": "test", "name": "test", "ts_ms": ts, "snapshot": None, "db": "shop",
            "schema": "public", "table": table, "txId": None, "lsn": lsn, "pos": None}


def make_events(seed: int, users: int = 50, items: int = 20, events: int = 3000, late_fraction: float = 0.02,
                t0: int = T0) -> list[tuple[TopicSpec, dict[str, Any]]]:
    """Deterministic CDC snapshot + updates/deletes + a clickstream with out-of-order and late events."""
    rnd = random.Random(seed)
    out: list[tuple[TopicSpec, dict[str, Any]]] = []
    lsn = 0
    for i in range(users):
        lsn += 1
        row = {"user_id": f"u{i}", "tier": rnd.choice(["free", "plus", "premium"]), "country": rnd.choice(["DE", "FR"]),
               "signup_ts": t0 - rnd.randint(1, 900) * 86_400_000, "marketing_opt_in": rnd.random() < 0.5}
        out.append((CDC_USERS, {"before": None, "after": row, "source": _source("users", t0, lsn), "op": "r", "ts_ms": t0}))
    for i in range(items):
        lsn += 1
        row = {"item_id": f"i{i}", "category": rnd.choice(["books", "toys"]), "price": round(rnd.uniform(1, 200), 2),
               "brand": "b"}
        out.append((CDC_ITEMS, {"before": None, "after": row, "source": _source("items", t0, lsn), "op": "r", "ts_ms": t0}))
    clock = t0
    for n in range(events):
        clock += rnd.randint(0, 2_000)
        ts = clock
        r = rnd.random()
        if r < late_fraction:
            ts = clock - rnd.randint(6, 30) * 60_000  # beyond the default 5 min lateness (usually)
        elif r < 0.2:
            ts = clock - rnd.randint(0, 240_000)  # out of order, within lateness
        user = f"u{rnd.randrange(users)}"
        kind = rnd.choices(["page_view", "click", "add_to_cart", "purchase", "search"], [50, 25, 10, 5, 10])[0]
        item = None if kind == "search" else f"i{rnd.randrange(items)}"
        price = round(rnd.uniform(1, 200), 2) if item and (kind == "purchase" or rnd.random() < 0.7) else None
        out.append((CLICKSTREAM, {
            "event_id": f"e{seed}-{n}", "user_id": user, "session_id": f"{user}-s{ts // 1_800_000}",
            "event_type": kind, "item_id": item, "price": price, "ts": ts, "page": "/", "referrer": None,
            "device": "mobile", "country": "DE", "props": {}}))
        if rnd.random() < 0.01:
            lsn += 1
            uid = f"u{rnd.randrange(users)}"
            op = "d" if rnd.random() < 0.2 else "u"
            after = None if op == "d" else {"user_id": uid, "tier": "premium", "country": "FR",
                                             "signup_ts": t0 - 5 * 86_400_000, "marketing_opt_in": True}
            before = {"user_id": uid, "tier": "free", "country": "DE", "signup_ts": t0, "marketing_opt_in": False}
            out.append((CDC_USERS, {"before": before, "after": after, "source": _source("users", clock, lsn), "op": op,
                                    "ts_ms": clock}))
    return out


def publish(bootstrap: str, registry_url: str, events: list[tuple[TopicSpec, dict[str, Any]]],
            garbage: list[tuple[TopicSpec, bytes]] = ()) -> None:
    registry = RegistryClient(registry_url)
    serdes: dict[str, TopicSerde] = {}
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
    for spec, record in events:
        serde = serdes.get(spec.name) or serdes.setdefault(spec.name, TopicSerde(spec, registry))
        producer.produce(spec.name, key=spec.key_of(record).encode(), value=serde.serialize(record))
        producer.poll(0)
    for spec, payload in garbage:
        producer.produce(spec.name, key=b"junk", value=payload)
    assert producer.flush(30) == 0


def provision(bootstrap: str, partitions: int = 4) -> None:
    ensure_topics({"bootstrap.servers": bootstrap}, all_topic_names(), partitions)


def _consume_all(bootstrap: str, topics: list[str], expected: int, timeout_s: float):
    """Every record of `topics` from offset 0 (by assignment, no group join), until `expected` or timeout."""
    from confluent_kafka.admin import AdminClient

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "read-back", "enable.auto.commit": False})
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    consumer.assign([TopicPartition(t, p, 0) for t in topics for p in md.topics[t].partitions])
    seen = 0
    deadline = time.monotonic() + timeout_s
    try:
        while seen < expected and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                if not msg.error():
                    seen += 1
                    yield msg
    finally:
        consumer.close()


def read_back(bootstrap: str, registry_url: str, specs: list[TopicSpec], expected: int,
              timeout_s: float = 60) -> list[tuple[int, int, str, dict[str, Any] | None, bytes]]:
    """Every record of `specs` as (partition, offset, topic, decoded-or-None, raw value)."""
    registry = RegistryClient(registry_url)
    serdes = {s.name: TopicSerde(s, registry) for s in specs}
    out = []
    for msg in _consume_all(bootstrap, [s.name for s in specs], expected, timeout_s):
        try:
            record = serdes[msg.topic()].deserialize(msg.value())
        except Exception:
            record = None
        out.append((msg.partition(), msg.offset(), msg.topic(), record, msg.value()))
    return out


def redis_features(url: str, namespace: str = "") -> dict[tuple[str, str], dict[str, Any]]:
    client = redis_lib.Redis.from_url(url)
    pattern = feature_key("*", "*", namespace)
    out = {}
    for key in client.scan_iter(pattern, count=1000):
        entity, eid = key.decode().split(":")[-2:]
        raw = client.hgetall(key)
        out[(entity, eid)] = {k.decode(): decode_value(entity, k.decode(), v) for k, v in raw.items()}
    return out


def flow_env(home: Path, bootstrap: str, registry_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    return {**os.environ, "STREAMML_HOME": str(home), "STREAMML_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "STREAMML_SCHEMA_REGISTRY_URL": registry_url, "STREAMML_REDIS_URL": redis_url,
            "STREAMML_FEATURES_EPOCH_S": "1", "STREAMML_FEATURES_METRICS_PORT": "0", **extra}


def start_flow(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    log = open(log_path, "ab")
    return subprocess.Popen([sys.executable, "-m", "streams.flows.run"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)


def wait_for_redis(url: str, want: dict, timeout_s: float) -> dict:
    """Poll Redis until it holds exactly `want` (or time out); returns what it held last."""
    deadline = time.monotonic() + timeout_s
    got: dict = {}
    while time.monotonic() < deadline:
        got = redis_features(url)
        if got.keys() == want.keys() and all(_close(got[k], want[k]) for k in want):
            return got
        time.sleep(0.5)
    return got


def _close(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k, v in b.items():
        w = a[k]
        if isinstance(v, float) or isinstance(w, float):
            if abs(float(v) - float(w)) > 1e-9 * max(1.0, abs(float(v))):
                return False
        elif v != w:
            return False
    return True




def read_dead_letters(bootstrap: str, topics: list[str], expected: int, timeout_s: float = 30) -> list[dict[str, Any]]:
    """Dead letters on `topics` as {key, value, streamml.* headers} dicts."""
    from streams.kafka.dlq import parse_headers

    return [{"key": m.key(), "value": m.value(), **parse_headers(m.headers())}
            for m in _consume_all(bootstrap, topics, expected, timeout_s)]


def cli(env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    """Run `streamml ARGS` (a wide terminal, so messages are not wrapped); assert success if `ok`."""
    proc = subprocess.run([sys.executable, "-m", "services.cli", *args], env={**env, "COLUMNS": "500"},
                          capture_output=True, text=True,
                          timeout=300)
    if ok:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc

"""10,000 fuzzed payloads interleaved with valid events on the flow's input topics.

Random bytes, a wrong magic byte, unknown or foreign schema ids, truncated and corrupted Avro bodies,
tombstones, and schema-valid but semantically invalid events (negative/NaN price, ts far in the
future or in seconds, missing keys, bad CDC ops): every one lands in `<topic>.dlq` with its original
key and bytes and the reason the code gives for it, the flow process never stops, nothing valid is
dead-lettered, and Redis ends up exactly as the oracle computes from the valid events alone.
"""

from __future__ import annotations

import copy
import glob
import math
import random
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from schemas.codec import HEADER_SIZE, MAGIC_BYTE, AvroCodec, frame
from schemas.registry import RegistryClient
from schemas.serde import TopicSerde
from schemas.topics import CDC_ITEMS, CDC_USERS, CLICKSTREAM, TOPICS, TopicSpec
from tests.flowkit import (
    _close,
    _consume_all,
    flow_env,
    make_events,
    provision,
    start_flow,
    wait_for_redis,
)
from tests.oracle import accepted_in_partition_order, expected_features
from tests.servers import free_port, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(120)]

FUZZ_SEED = 20_260_423
N_FUZZ = 10_000
LATENESS_MS = 300_000
INPUTS = (CLICKSTREAM, CDC_USERS, CDC_ITEMS)
HOUR_MS = 3_600_000
YEAR_MS = 365 * 24 * HOUR_MS
# How many of each category, out of N_FUZZ.
MIX = {"random_bytes": 1500, "bad_magic": 1000, "unknown_schema": 1200, "foreign_schema": 600,
       "truncated": 1500, "corrupt_avro": 1200, "semantic": 2800, "tombstone": 200}
DECODE_REASONS = {"empty", "truncated", "bad_magic", "unknown_schema", "invalid_avro"}
VALIDATION_REASONS = {"bad_timestamp", "future_timestamp", "bad_price", "missing_key", "missing_item",
                      "bad_op", "missing_row"}
CATEGORY_REASONS = {  # what each category may be dead-lettered as
    "random_bytes": {"truncated", "bad_magic", "unknown_schema"},
    "bad_magic": {"bad_magic"},
    "unknown_schema": {"unknown_schema"},
    "foreign_schema": {"invalid_avro"},
    "truncated": {"truncated", "invalid_avro"},
    "corrupt_avro": {"invalid_avro"},
    "semantic": VALIDATION_REASONS,
    "tombstone": {"empty"},
}


@dataclass(frozen=True)
class Fuzz:
    key: bytes
    spec: TopicSpec
    value: bytes | None
    category: str
    reason: str  # the reason code the flow must give


class _Fuzzer:
    """Builds fuzzed payloads from real events, with the real registry ids; deterministic for a seed."""

    def __init__(self, rnd: random.Random, registry: RegistryClient, valid: list[tuple[TopicSpec, dict]],
                 now_ms: int):
        self.rnd, self.now_ms = rnd, now_ms
        self.serdes = {s.name: TopicSerde(s, registry) for s in INPUTS}
        self.ids = registry.register_contract(TOPICS)  # subject -> id, as the flow's producers see them
        self.known = set(self.ids.values())
        assert max(self.known) < 1_000_000
        self.unknown_pool = [0, 999_999, 2**31 - 1, 2**31, 2**32 - 1, 123_456_789, 4_000_000_000]
        for schema_id in self.unknown_pool:
            assert schema_id not in self.known and registry.schema_by_id(schema_id) is None
        self.by_topic: dict[str, list[dict]] = {s.name: [] for s in INPUTS}
        for spec, record in valid:
            self.by_topic[spec.name].append(record)
        self.codecs = {s.name: AvroCodec(s.schema) for s in INPUTS}

    def base(self, spec: TopicSpec) -> dict:
        record = copy.deepcopy(self.rnd.choice(self.by_topic[spec.name]))
        if spec in (CDC_USERS, CDC_ITEMS) and record["after"] is None:  # a delete: use its before image
            record.update(after=record["before"], op="u")
        return record

    def body(self, spec: TopicSpec, record: dict | None = None) -> bytes:
        return self.codecs[spec.name].encode(record or self.base(spec))

    def decodes(self, spec: TopicSpec, body: bytes) -> bool:
        try:
            self.codecs[spec.name].decode(body)
            return True
        except Exception:  # (the flow must turn whatever this is into a DecodeError)
            return False

    def make(self, category: str, spec: TopicSpec) -> tuple[bytes | None, str]:
        return getattr(self, category)(spec)

    def random_bytes(self, spec: TopicSpec) -> tuple[bytes, str]:
        rnd = self.rnd
        while True:
            data = rnd.randbytes(rnd.choice([rnd.randint(1, 5), rnd.randint(6, 40), rnd.randint(6, 300)]))
            if rnd.random() < 0.1:  # now and then the right magic byte, so the id and body get parsed too
                data = bytes([MAGIC_BYTE]) + data[1:]
            if len(data) < HEADER_SIZE + 1:
                return data, "truncated"
            if data[0] != MAGIC_BYTE:
                return data, "bad_magic"
            if int.from_bytes(data[1:5], "big") not in self.known:
                return data, "unknown_schema"

    def bad_magic(self, spec: TopicSpec) -> tuple[bytes, str]:
        data = self.serdes[spec.name].serialize(self.base(spec))
        return bytes([self.rnd.randint(1, 255)]) + data[1:], "bad_magic"

    def unknown_schema(self, spec: TopicSpec) -> tuple[bytes, str]:
        if self.rnd.random() < 0.5:
            schema_id = self.rnd.choice(self.unknown_pool)
        else:
            schema_id = self.rnd.randint(1_000_000, 2**32 - 1)
        return frame(schema_id, self.body(spec)), "unknown_schema"

    def foreign_schema(self, spec: TopicSpec) -> tuple[bytes, str]:
        """A valid body framed with the id of another contract subject's schema."""
        other = self.rnd.choice([t for t in TOPICS if t != spec])
        return frame(self.ids[other.subject], self.body(spec)), "invalid_avro"

    def truncated(self, spec: TopicSpec) -> tuple[bytes, str]:
        data = self.serdes[spec.name].serialize(self.base(spec))
        cut = data[:self.rnd.randrange(len(data))]
        return cut, "truncated" if len(cut) < HEADER_SIZE + 1 else "invalid_avro"

    def corrupt_avro(self, spec: TopicSpec) -> tuple[bytes, str]:
        """The real header and a damaged body that no longer decodes (checked locally)."""
        rnd = self.rnd
        while True:
            record = self.base(spec)
            mode = rnd.random()
            if mode < 0.25:  # invalid UTF-8 in a string field
                marker = "~" * 8
                if spec == CLICKSTREAM:
                    record["page"] = marker
                else:
                    record["after"]["category" if spec == CDC_ITEMS else "country"] = marker
                body = self.body(spec, record).replace(marker.encode(), rnd.choice([b"\xff\xff", b"\xc3\x28"]) * 4, 1)
            else:
                body = bytearray(self.body(spec, record))
                if mode < 0.7:  # overwrite a few bytes
                    for _ in range(rnd.randint(1, 3)):
                        body[rnd.randrange(len(body))] = rnd.randrange(256)
                else:  # a random body of a random length
                    body = bytearray(rnd.randbytes(rnd.randint(1, 120)))
                body = bytes(body)
            if not self.decodes(spec, body):
                return frame(self.ids[spec.subject], body), "invalid_avro"

    def tombstone(self, spec: TopicSpec) -> tuple[None, str]:
        return None, "empty"

    def semantic(self, spec: TopicSpec) -> tuple[bytes, str]:
        """Schema-valid (real id, decodable) but breaking one rule of schemas.validation."""
        rnd, record = self.rnd, self.base(spec)
        time_field = spec.time_field
        kinds = ["future_ts", "seconds_ts", "negative_ts"]
        if spec == CLICKSTREAM:
            kinds += ["neg_price", "nan_price", "inf_price", "huge_price", "empty_user", "missing_item"]
        else:
            kinds += ["bad_op", "missing_after", "missing_before", "empty_key"]
            if spec == CDC_ITEMS:
                kinds += ["neg_price", "nan_price", "neg_price_delete"]
        kind = rnd.choice(kinds)
        if kind == "future_ts":
            record[time_field] = self.now_ms + rnd.randint(2 * HOUR_MS, 50 * YEAR_MS)
            reason = "future_timestamp"
        elif kind == "seconds_ts":
            record[time_field] //= 1000
            reason = "bad_timestamp"
        elif kind == "negative_ts":
            record[time_field] = -rnd.randint(1, 10**13)
            reason = "bad_timestamp"
        elif kind in ("neg_price", "nan_price", "inf_price", "huge_price"):
            price = {"neg_price": -rnd.uniform(0.01, 1e6), "nan_price": math.nan,
                     "inf_price": rnd.choice([math.inf, -math.inf]), "huge_price": rnd.uniform(1e9, 1e15)}[kind]
            if spec == CLICKSTREAM:
                record["price"] = price
                if record["item_id"] is None:
                    record["item_id"], record["event_type"] = "i0", "purchase"
            else:
                record["after"]["price"] = price
            reason = "bad_price"
        elif kind == "neg_price_delete":
            record.update(op="d", before={**record["after"], "price": -rnd.uniform(0.01, 1e6)}, after=None)
            reason = "bad_price"
        elif kind == "empty_user":
            record["user_id"] = ""
            reason = "missing_key"
        elif kind == "missing_item":
            record["event_type"], record["item_id"] = rnd.choice(["click", "add_to_cart", "purchase"]), None
            reason = "missing_item"
        elif kind == "bad_op":
            record["op"] = rnd.choice(["x", "", "U", "delete", "rr", "\u00e9"])
            reason = "bad_op"
        elif kind == "missing_after":
            record.update(op=rnd.choice(["c", "u", "r"]), after=None)
            reason = "missing_row"
        elif kind == "missing_before":
            record.update(op="d", before=None)
            reason = "missing_row"
        else:  # empty_key
            record["after"]["user_id" if spec == CDC_USERS else "item_id"] = ""
            record["before"] = None
            reason = "missing_key"
        return self.serdes[spec.name].serialize(record), reason


def _fuzz(registry_url: str, valid: list[tuple[TopicSpec, dict]]) -> list[Fuzz]:
    rnd = random.Random(FUZZ_SEED)
    fuzzer = _Fuzzer(rnd, RegistryClient(registry_url), valid, int(time.time() * 1000))
    categories = [c for c, n in MIX.items() for _ in range(n)]
    assert len(categories) == N_FUZZ
    rnd.shuffle(categories)
    out = []
    for i, category in enumerate(categories):
        spec = rnd.choices(INPUTS, [2, 1, 1])[0]
        value, reason = fuzzer.make(category, spec)
        assert reason in CATEGORY_REASONS[category]
        out.append(Fuzz(b"fuzz-%05d" % i, spec, value, category, reason))
    return out


def _interleave(rnd: random.Random, valid: list, fuzz: list) -> list:
    """A random merge: both lists keep their own order."""
    out, i, j = [], 0, 0
    while i < len(valid) or j < len(fuzz):
        if j == len(fuzz) or (i < len(valid) and rnd.random() < (len(valid) - i) / (len(valid) - i + len(fuzz) - j)):
            out.append(valid[i])
            i += 1
        else:
            out.append(fuzz[j])
            j += 1
    return out


def _produce(bootstrap: str, registry_url: str, stream: list) -> None:
    registry = RegistryClient(registry_url)
    serdes = {s.name: TopicSerde(s, registry) for s in INPUTS}
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True})
    for item in stream:
        if isinstance(item, Fuzz):
            producer.produce(item.spec.name, key=item.key, value=item.value)
        else:
            spec, record = item
            producer.produce(spec.name, key=spec.key_of(record).encode(), value=serdes[spec.name].serialize(record))
        producer.poll(0)
    assert producer.flush(30) == 0


def _drain_dead_letters(bootstrap: str, topics: list[str], expected: int, timeout_s: float,
                        idle_s: float = 2.0) -> list[dict[str, Any]]:
    """Every dead letter on `topics` (with its DLQ topic): read until `expected` arrived and then
    nothing more came for `idle_s` (so a surplus is seen), or until the timeout."""
    from streams.kafka.dlq import parse_headers

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "fuzz-dlq", "enable.auto.commit": False})
    consumer.assign([TopicPartition(t, p, 0) for t in topics for p in range(4)])
    out: list[dict[str, Any]] = []
    deadline, last = time.monotonic() + timeout_s, time.monotonic()
    try:
        while time.monotonic() < deadline and (len(out) < expected or time.monotonic() - last < idle_s):
            for m in consumer.consume(1000, 0.2):
                if m.error() is None:
                    out.append({"dlq": m.topic(), "key": m.key(), "value": m.value(), **parse_headers(m.headers())})
                    last = time.monotonic()
    finally:
        consumer.close()
    return out


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {(s.name.removesuffix("_total"), tuple(sorted(s.labels.items()))): s.value
            for m in text_string_to_metric_families(text) for s in m.samples}


def _alive(flow: subprocess.Popen, log_path: Path) -> None:
    if flow.poll() is not None:
        log = log_path.read_text(errors="replace")
        start = log.find("Traceback")
        raise AssertionError(f"the flow stopped (exit {flow.returncode}):\n{log[start:][-3000:]}")


def _wait_for_oracle(flow: subprocess.Popen, log_path: Path, url: str, want: dict, timeout_s: float) -> dict:
    """`wait_for_redis`, failing at once if the flow process dies meanwhile."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = wait_for_redis(url, want, timeout_s=2)
        if got.keys() == want.keys() and all(_close(got[k], want[k]) for k in want):
            return got
        _alive(flow, log_path)
        if time.monotonic() > deadline:
            return got


def _event_log_positions(home) -> list[tuple[str, int, int]]:
    files = glob.glob(str(home / "data" / "events" / "topic=*" / "date=*" / "hour=*" / "*.parquet"))
    if not files:
        return []
    rows = pq.ParquetDataset(files).read(columns=["_topic", "_partition", "_offset"]).to_pylist()
    return [(r["_topic"], r["_partition"], r["_offset"]) for r in rows]


def test_fuzzed_payloads_are_dead_lettered_and_valid_events_match_the_oracle(
        fresh_kafka, registry_url, redis_db_url, tmp_path):
    provision(fresh_kafka)
    # Valid events: no late ones, so every dead letter is a fuzzed payload (a fuzzed event that moved
    # the lateness watermark would push valid events into the DLQ and break the exact count).
    valid = make_events(seed=23, users=60, items=20, events=3000, late_fraction=0.0)
    fuzz = _fuzz(registry_url, valid)
    by_key = {f.key: f for f in fuzz}
    stream = _interleave(random.Random(FUZZ_SEED + 1), valid, fuzz)

    metrics_port = free_port()
    home = tmp_path / "home"
    env = flow_env(home, fresh_kafka, registry_url, redis_db_url, STREAMML_FEATURES_METRICS_PORT=str(metrics_port))
    flow = start_flow(env, tmp_path / "flow.log")
    try:
        _produce(fresh_kafka, registry_url, stream)  # while the flow is already consuming

        # Where each valid event landed (partition, offset): the oracle applies lateness per partition.
        registry = RegistryClient(registry_url)
        serdes = {s.name: TopicSerde(s, registry) for s in INPUTS}
        positions, records = [], []
        for msg in _consume_all(fresh_kafka, [s.name for s in INPUTS], len(stream), 60):
            if msg.key() in by_key:
                positions.append((msg.topic(), msg.partition(), msg.offset(), msg.key()))
                continue
            records.append((msg.partition(), msg.offset(), msg.topic(), serdes[msg.topic()].deserialize(msg.value())))
        assert len(records) == len(valid) and len(positions) == N_FUZZ
        accepted, late = accepted_in_partition_order(records, LATENESS_MS)
        assert not late
        want = expected_features(accepted)

        got = _wait_for_oracle(flow, tmp_path / "flow.log", redis_db_url, want, timeout_s=60)
        assert got.keys() == want.keys()
        mismatches = {k: (got[k], want[k]) for k in want if got[k] != pytest.approx(want[k], nan_ok=False)}
        assert not mismatches, list(mismatches.items())[:3]

        # The flow has read every input record (its position gauges reach the end of each topic) ...
        produced = dict(Counter(item.spec.name if isinstance(item, Fuzz) else item[0].name for item in stream))
        read_to: dict[str, int] = {}
        deadline = time.monotonic() + 30
        while read_to != produced and time.monotonic() < deadline:
            read_to = Counter()
            for (name, labels), v in _scrape(metrics_port).items():
                if name == "streamml_features_position_offset":
                    read_to[dict(labels)["topic"]] += int(v)
            read_to = dict(read_to)
            time.sleep(0.2)
        assert read_to == produced, "the flow has not read every input record"
        # ... and has dead-lettered exactly the fuzzed payloads: nothing missing, nothing more.
        letters = _drain_dead_letters(fresh_kafka, [s.dlq for s in INPUTS], N_FUZZ, timeout_s=60)
        assert len(letters) == N_FUZZ
        keys = [d["key"] for d in letters]
        assert len(set(keys)) == N_FUZZ and set(keys) == set(by_key), "a dead letter is missing, doubled or valid"
        where = {key: (topic, partition, offset) for topic, partition, offset, key in positions}
        wrong = []
        for d in letters:
            f = by_key[d["key"]]
            reason = d.get("streamml.error.reason", "")
            assert reason and d.get("streamml.error.detail"), d
            assert d["value"] == f.value, (f.category, d)
            assert d["dlq"] == f.spec.dlq
            assert (d["streamml.source.topic"], int(d["streamml.source.partition"]),
                    int(d["streamml.source.offset"])) == where[f.key]
            assert reason in (DECODE_REASONS if f.category != "semantic" else VALIDATION_REASONS)
            if reason != f.reason or reason not in CATEGORY_REASONS[f.category]:
                wrong.append((f.category, f.reason, reason, d["streamml.error.detail"][:200]))
        assert not wrong, (len(wrong), wrong[:5])

        # The flow's own dead-letter counters agree.
        scraped = _scrape(metrics_port)
        counted = {(dict(labels)["topic"], dict(labels)["reason"]): int(v) for (name, labels), v in scraped.items()
                   if name == "streamml_features_dead_letters"}
        assert counted == dict(Counter((f.spec.name, f.reason) for f in fuzz))

        # The event log (Parquet) holds every valid event and no fuzzed one.
        want_log = {(t, p, o) for p, o, t, _ in records}
        wait_for(lambda: len(_event_log_positions(home)) >= len(want_log), 30, "event log")
        logged = _event_log_positions(home)
        assert len(logged) == len(set(logged)) and set(logged) == want_log

        _alive(flow, tmp_path / "flow.log")
    finally:
        flow.send_signal(signal.SIGTERM)
        flow.wait(30)
    log = (tmp_path / "flow.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
    print("dead letters by reason:", dict(sorted(Counter(f.reason for f in fuzz).items())))


# A default producer (message.max.bytes 1,000,000) accepts a value this big; with the key and the
# dead-letter headers added, the dead letter no longer fits the DLQ producer's identical limit.
BIG = 999_800


def test_a_payload_near_the_message_size_limit_does_not_stop_the_flow(fresh_kafka, registry_url, redis_db_url,
                                                                     tmp_path):
    provision(fresh_kafka)
    valid = make_events(seed=29, users=10, items=5, events=300, late_fraction=0.0)
    junk = Fuzz(b"fuzz-big", CLICKSTREAM, b"\x07" + random.Random(FUZZ_SEED).randbytes(BIG - 1), "random_bytes",
                "bad_magic")
    half = len(valid) // 2
    flow = start_flow(flow_env(tmp_path / "home", fresh_kafka, registry_url, redis_db_url), tmp_path / "flow.log")
    try:
        _produce(fresh_kafka, registry_url, [*valid[:half], junk, *valid[half:]])
        registry = RegistryClient(registry_url)
        serdes = {s.name: TopicSerde(s, registry) for s in INPUTS}
        records = [(m.partition(), m.offset(), m.topic(), serdes[m.topic()].deserialize(m.value()))
                   for m in _consume_all(fresh_kafka, [s.name for s in INPUTS], len(valid) + 1, 60)
                   if m.key() != junk.key]
        assert len(records) == len(valid)
        accepted, late = accepted_in_partition_order(records, LATENESS_MS)
        assert not late
        want = expected_features(accepted)
        got = _wait_for_oracle(flow, tmp_path / "flow.log", redis_db_url, want, timeout_s=30)
        assert got.keys() == want.keys()
        letters = _drain_dead_letters(fresh_kafka, [CLICKSTREAM.dlq], 1, timeout_s=20)
        # The bytes cannot fit the DLQ with their headers: they may be dropped, but the letter must be there.
        assert [(d["key"], d["streamml.error.reason"]) for d in letters] == [(junk.key, "bad_magic")]
        assert letters[0]["value"] is None and letters[0]["streamml.error.dropped"] == "value"
        _alive(flow, tmp_path / "flow.log")
    finally:
        flow.send_signal(signal.SIGTERM)
        flow.wait(30)

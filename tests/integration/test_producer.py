"""The producer API and the load runner against a real Tansu broker and our real schema registry.

Records are read back with confluent-kafka's own `AvroDeserializer` as well as our serde, and
counted by consuming them (Tansu's high watermark can under-report, so it is never trusted here).
"""

from __future__ import annotations

import json
import signal
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from itertools import islice
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from schemas.errors import BrokerError, ConfigError, SchemaError
from schemas.registry import RegistryClient
from schemas.serde import TopicSerde
from schemas.topics import CDC_ITEMS, CDC_USERS, CLICKSTREAM, topic_spec
from services.loadgen import LoadConfig, generate
from services.loadgen.run import LOAD_TOPICS, run_load
from services.producer import EventProducer
from streams.kafka.admin import ensure_topics
from streams.runtime.lifecycle import Shutdown
from streams.settings import load_settings
from tests.servers import free_port
from tests.unit.test_codec import MemoryRegistry

pytestmark = pytest.mark.integration

NAMES = [t.name for t in LOAD_TOPICS]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def read_back(bootstrap: str, topics: list[str], expected: int, timeout_s: float = 60.0) -> list[Message]:
    """Every record of `topics` from the beginning: until `expected` are in, then one more second for extras."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"readback-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False})
    metadata = consumer.list_topics(timeout=10)
    consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t in topics for p in metadata.topics[t].partitions])
    out: list[Message] = []
    deadline = time.monotonic() + timeout_s
    extra_until: float | None = None
    try:
        while time.monotonic() < (extra_until or deadline):
            out += [m for m in consumer.consume(1000, 0.2) if m.error() is None]
            if extra_until is None and len(out) >= expected:
                extra_until = time.monotonic() + 1.0
    finally:
        consumer.close()
    return out


def millis(value: Any) -> Any:
    """confluent's AvroDeserializer turns timestamp-millis into datetimes; we keep int millis."""
    if isinstance(value, datetime):
        return (value - EPOCH) // timedelta(milliseconds=1)
    if isinstance(value, dict):
        return {k: millis(v) for k, v in value.items()}
    return value


def canonical(records: list[dict[str, Any]]) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True) for r in records)


@pytest.fixture
def seed() -> int:
    return int(uuid.uuid4().int % 1_000_000)


@pytest.fixture
def restore_signals() -> Iterator[None]:
    """`Shutdown()` installs SIGINT/SIGTERM handlers; give pytest its own back afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_published_events_read_back_identically_with_confluent_deserializer_and_our_serde(
    fresh_kafka: str, registry_url: str, seed: int
) -> None:
    events = list(islice(generate(LoadConfig(users=150, items=40, seed=seed, late_fraction=0.1, cdc_share=0.05)),
                         4000))
    ensure_topics({"bootstrap.servers": fresh_kafka}, NAMES, partitions=3)
    registry = RegistryClient(registry_url)
    with EventProducer({"bootstrap.servers": fresh_kafka}, registry) as producer:
        for spec, record in events:
            producer.publish(spec, record)
        assert producer.flush(30) == 0
        stats = producer.stats()
    assert stats["idempotent"] is True  # Tansu grants producer ids (InitProducerId)
    assert (stats["queued"], stats["delivered"], stats["failed"]) == (len(events), len(events), 0)

    messages = read_back(fresh_kafka, NAMES, len(events))
    assert len(messages) == len(events)
    confluent = AvroDeserializer(SchemaRegistryClient({"url": registry_url}))
    ours = {spec.name: TopicSerde(spec, registry) for spec in LOAD_TOPICS}
    got: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for msg in messages:
        topic = msg.topic()
        record = ours[topic].deserialize(msg.value(), msg.partition(), msg.offset())
        theirs = confluent(msg.value(), SerializationContext(topic, MessageField.VALUE))
        assert millis(theirs) == record
        assert msg.key() == topic_spec(topic).key_of(record).encode()
        got[topic].append(record)
    for spec in LOAD_TOPICS:
        sent = [r for s, r in events if s is spec]
        assert sent and canonical(got[spec.name]) == canonical(sent)


def test_records_of_one_key_arrive_in_publish_order(fresh_kafka: str, seed: int) -> None:
    events = [(s, r) for s, r in islice(generate(LoadConfig(users=50, items=20, seed=seed)), 3000) if s is CLICKSTREAM]
    ensure_topics({"bootstrap.servers": fresh_kafka}, [CLICKSTREAM.name], partitions=4)
    registry = MemoryRegistry()
    with EventProducer({"bootstrap.servers": fresh_kafka}, registry) as producer:
        for spec, record in events:
            producer.publish(spec, record)
    serde = TopicSerde(CLICKSTREAM, registry)
    messages = sorted(read_back(fresh_kafka, [CLICKSTREAM.name], len(events)),
                      key=lambda m: (m.partition(), m.offset()))
    consumed, published = defaultdict(list), defaultdict(list)
    for msg in messages:
        record = serde.deserialize(msg.value())
        consumed[record["user_id"]].append(record["event_id"])
    for _, record in events:
        published[record["user_id"]].append(record["event_id"])
    assert consumed == published


def test_record_that_breaks_its_schema_is_refused_naming_topic_and_field_and_nothing_is_sent(
    fresh_kafka: str, seed: int
) -> None:
    good = next(r for s, r in generate(LoadConfig(users=5, items=5, seed=seed)) if s is CLICKSTREAM)
    ensure_topics({"bootstrap.servers": fresh_kafka}, [CLICKSTREAM.name], partitions=1)
    registry = MemoryRegistry()
    with EventProducer({"bootstrap.servers": fresh_kafka}, registry) as producer:
        with pytest.raises(SchemaError, match=r"(?s)clickstream\.events.*Clickstream\.price"):
            producer.publish(CLICKSTREAM, {**good, "event_id": "bad", "price": "free"})
        assert producer.stats()["queued"] == 0
        producer.publish(CLICKSTREAM, good)
    messages = read_back(fresh_kafka, [CLICKSTREAM.name], 1)
    assert [TopicSerde(CLICKSTREAM, registry).deserialize(m.value())["event_id"] for m in messages] == [good["event_id"]]


class CountingProducer:
    """A real librdkafka producer that counts how often its local queue was full."""

    def __init__(self, config: dict[str, Any]):
        self.inner = Producer(config)
        self.full = 0

    def produce(self, *args: Any, **kwargs: Any) -> None:
        try:
            self.inner.produce(*args, **kwargs)
        except BufferError:
            self.full += 1
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __len__(self) -> int:
        return len(self.inner)


def test_full_local_queue_is_waited_out_and_no_record_is_lost(fresh_kafka: str, seed: int) -> None:
    events = list(islice(generate(LoadConfig(users=100, items=30, seed=seed)), 3000))
    ensure_topics({"bootstrap.servers": fresh_kafka}, NAMES, partitions=2)
    made: list[CountingProducer] = []

    def factory(config: dict[str, Any]) -> CountingProducer:
        made.append(CountingProducer(config))
        return made[-1]

    with EventProducer({"bootstrap.servers": fresh_kafka}, MemoryRegistry(), producer_factory=factory,
                       **{"queue.buffering.max.messages": 20}) as producer:
        for spec, record in events:
            producer.publish(spec, record)
        assert producer.flush(30) == 0
        assert producer.stats()["delivered"] == len(events)
    assert made[0].full > 0  # the queue really overflowed
    assert len(read_back(fresh_kafka, NAMES, len(events))) == len(events)


class WithoutIdempotence:
    """A producer factory modelling a cluster without idempotent producing, recording each config.

    Tansu does support InitProducerId, so an idempotent producer is told to treat it as a 0.9 broker:
    the real "Idempotent producer not supported" fatal error. A plain producer is left alone: Tansu
    only decodes v2 record batches, which librdkafka does not send to a 0.9 broker.
    """

    def __init__(self) -> None:
        self.configs: list[dict[str, Any]] = []

    def __call__(self, config: dict[str, Any]) -> Producer:
        self.configs.append(config)
        if config["enable.idempotence"]:
            config = {**config, "api.version.request": False, "broker.version.fallback": "0.9.0"}
        return Producer(config)


@pytest.mark.timeout(60)
def test_broker_without_idempotent_producing_fails_fast_saying_how_to_turn_idempotence_off(
    fresh_kafka: str, seed: int
) -> None:
    events = list(islice(generate(LoadConfig(users=50, items=20, seed=seed)), 500))
    ensure_topics({"bootstrap.servers": fresh_kafka}, NAMES, partitions=2)
    factory = WithoutIdempotence()
    # A record librdkafka failed to give back would hold close() until delivery.timeout.ms (5 min by
    # default): 20 s makes such a regression fail the time bound below instead of stalling the suite.
    config = {"bootstrap.servers": fresh_kafka, "delivery.timeout.ms": 20_000}
    started = time.monotonic()
    with EventProducer(config, MemoryRegistry(), producer_factory=factory) as producer:
        # The fatal error surfaces in flush(), or in publish() if librdkafka raised it that early.
        with pytest.raises(BrokerError, match=r"(?s)Idempotent producer not supported.*"
                                              r"set STREAMML_KAFKA_ENABLE_IDEMPOTENCE=false"):
            for spec, record in events:
                producer.publish(spec, record)
            producer.flush(10)
        assert time.monotonic() - started < 10  # fails fast: no waiting out the flush timeout, no retry loop
        with pytest.raises(BrokerError, match="STREAMML_KAFKA_ENABLE_IDEMPOTENCE=false"):
            producer.publish(*events[0])  # a failed producer refuses further work with the same advice
        with pytest.raises(BrokerError, match="STREAMML_KAFKA_ENABLE_IDEMPOTENCE=false"):
            producer.flush(1)
        stats = producer.stats()
    assert time.monotonic() - started < 15  # closing is quick too: nothing left waiting for a producer id
    assert producer.close() == stats["queued"]  # `with` closed it without raising again: none acknowledged
    assert stats["idempotent"] is True and "Idempotent producer not supported" in stats["last_error"]
    assert stats["delivered"] == 0 and len(factory.configs) == 1  # no second producer behind the user's back
    assert read_back(fresh_kafka, NAMES, 0) == []  # nothing is written without a producer id


@pytest.mark.parametrize("source", ["mapping", "environment"])
def test_idempotence_turned_off_explicitly_delivers_every_record_to_a_broker_without_it(
    fresh_kafka: str, seed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    events = list(islice(generate(LoadConfig(users=50, items=20, seed=seed)), 500))
    ensure_topics({"bootstrap.servers": fresh_kafka}, NAMES, partitions=2)
    if source == "mapping":
        kafka: Any = {"bootstrap.servers": fresh_kafka, "enable.idempotence": False}
    else:  # the documented fix: STREAMML_KAFKA_ENABLE_IDEMPOTENCE=false, passed through by Settings
        monkeypatch.setenv("STREAMML_KAFKA_ENABLE_IDEMPOTENCE", "false")
        kafka = load_settings(kafka_bootstrap_servers=fresh_kafka, home=tmp_path)
    factory = WithoutIdempotence()
    with EventProducer(kafka, MemoryRegistry(), producer_factory=factory) as producer:
        for spec, record in events:
            producer.publish(spec, record)
        assert producer.flush(30) == 0
        stats = producer.stats()
    assert [c["enable.idempotence"] for c in factory.configs] == [False]  # the explicit setting won
    assert stats["idempotent"] is False and "Idempotent" not in str(stats["last_error"])
    assert (stats["queued"], stats["delivered"], stats["failed"]) == (len(events), len(events), 0)
    assert len(read_back(fresh_kafka, NAMES, len(events))) == len(events)


def test_run_load_keeps_the_rate_and_every_delivered_event_is_consumed(
    fresh_kafka: str, registry_url: str, seed: int, tmp_path: Path
) -> None:
    settings = load_settings(kafka_bootstrap_servers=fresh_kafka, schema_registry_url=registry_url,
                             topic_partitions=3, home=tmp_path)
    rate, duration = 800.0, 3.0
    summary = run_load(settings, LoadConfig(users=100, items=30, seed=seed), rate, duration,
                       RegistryClient(registry_url))
    sent, elapsed = summary["events"], summary["elapsed_s"]
    print(json.dumps({k: summary[k] for k in ("events", "elapsed_s", "achieved_rate", "delivered_rate")}))
    assert summary["stopped"] == "duration"
    assert sent <= rate * elapsed + 8  # never above the rate: at most one batch (rate / 100) of burst
    assert sent >= 0.7 * rate * duration  # lenient: a busy CI machine may lag, never overshoot
    assert {name: t["partitions"] for name, t in summary["topics"].items()} == dict.fromkeys(NAMES, 3)
    delivered = sum(t["delivered"] for t in summary["topics"].values())
    assert delivered == sent and summary["undelivered"] == 0
    assert len(read_back(fresh_kafka, NAMES, sent)) == sent


def test_run_load_stops_cleanly_on_shutdown(fresh_kafka: str, seed: int, tmp_path: Path) -> None:
    settings = load_settings(kafka_bootstrap_servers=fresh_kafka, topic_partitions=1, home=tmp_path)
    shutdown = Shutdown(install=False)
    progress: list[dict[str, Any]] = []
    threading.Timer(1.5, shutdown.request).start()
    started = time.monotonic()
    summary = run_load(settings, LoadConfig(users=50, items=20, seed=seed), 300.0, None, MemoryRegistry(),
                       on_progress=progress.append, shutdown=shutdown, progress_every_s=0.5)
    assert summary["stopped"] == "shutdown" and time.monotonic() - started < 15
    assert summary["undelivered"] == 0
    assert sum(t["delivered"] for t in summary["topics"].values()) == summary["events"] > 0
    assert progress and progress[-1]["events"] <= summary["events"]


def test_run_load_serves_its_counters_on_metrics_while_it_runs(fresh_kafka: str, seed: int, tmp_path: Path) -> None:
    settings = load_settings(kafka_bootstrap_servers=fresh_kafka, topic_partitions=1, home=tmp_path)
    port = free_port()
    scraped: list[tuple[dict[str, Any], dict[str, list[Any]]]] = []

    def scrape(progress: dict[str, Any]) -> None:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        families = {f.name: f.samples for f in text_string_to_metric_families(text) if f.name.startswith("streamml_")}
        scraped.append((progress, families))

    summary = run_load(settings, LoadConfig(users=50, items=20, seed=seed, late_fraction=0.3), 400.0, 2.5,
                       MemoryRegistry(), on_progress=scrape, progress_every_s=0.5, metrics_port=port)
    assert summary["metrics_port"] == port and len(scraped) >= 2
    progress, families = scraped[-1]
    by_outcome = defaultdict(float)
    for sample in families["streamml_loadgen_records"]:
        by_outcome[sample.labels["outcome"]] += sample.value
    assert by_outcome["queued"] == progress["events"] > 0  # scraped right after the progress was read
    assert by_outcome["delivered"] == progress["delivered"] and by_outcome["failed"] == 0
    assert families["streamml_loadgen_late_events"][0].value == progress["late"] > 0
    assert families["streamml_loadgen_target_rate_events_per_second"][0].value == 400.0
    with pytest.raises(httpx.ConnectError):  # served while the run lasts, not after
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_run_load_refuses_a_metrics_port_in_use_with_a_clear_error(fresh_kafka: str, seed: int, tmp_path: Path) -> None:
    import socket

    settings = load_settings(kafka_bootstrap_servers=fresh_kafka, topic_partitions=1, home=tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"port {port}.*STREAMML_LOADGEN_METRICS_PORT"):
            run_load(settings, LoadConfig(users=5, items=5, seed=seed), 100.0, 1.0, MemoryRegistry(), metrics_port=port)


def test_produce_command_prints_one_json_summary(
    fresh_kafka: str, registry_url: str, seed: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    restore_signals: None
) -> None:
    import typer

    from services.commands.produce import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # two commands, so typer keeps `produce` as a sub-command
    monkeypatch.setenv("STREAMML_KAFKA_BOOTSTRAP_SERVERS", fresh_kafka)
    monkeypatch.setenv("STREAMML_SCHEMA_REGISTRY_URL", registry_url)
    monkeypatch.setenv("STREAMML_HOME", str(tmp_path))
    result = CliRunner().invoke(app, ["produce", "--rate", "0", "--max-events", "600", "--users", "40",
                                      "--items", "10", "--seed", str(seed), "--late-fraction", "0.2", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["stopped"] == "max_events" and summary["events"] == 600 and summary["seed"] == seed
    assert sum(t["delivered"] for t in summary["topics"].values()) == 600
    snapshot = 40 + 10
    assert summary["topics"][CDC_USERS.name]["queued"] >= 40 and summary["topics"][CDC_ITEMS.name]["queued"] >= 10
    assert summary["topics"][CLICKSTREAM.name]["queued"] > 0 and 600 - snapshot >= summary["late"] > 0
    assert set(summary["topics"]) == set(NAMES)

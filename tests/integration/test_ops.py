"""The ops service against a real broker: exact consumer lag (messages and seconds), and the path
scrape -> history -> dashboard query -> HTTP, driven through `streamml run ops`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from streams.kafka.admin import ensure_topics
from streams.kafka.lag import LagProbe
from tests.servers import free_port, wait_for

pytestmark = pytest.mark.integration


def _produce(bootstrap: str, topic: str, per_partition: dict[int, list[int]]) -> None:
    """Records with the given Kafka timestamps (ms), in one batch per partition as a busy producer would."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50})
    for partition, stamps in per_partition.items():
        for i, ts in enumerate(stamps):
            producer.produce(topic, value=b"x%d" % i, partition=partition, timestamp=ts)
    assert producer.flush(10) == 0


def _commit(bootstrap: str, group: str, offsets: dict[tuple[str, int], int]) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    consumer.commit(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()], asynchronous=False)
    consumer.close()


def test_lag_probe_counts_messages_and_the_age_of_the_oldest_unprocessed_record(kafka_bootstrap, unique):
    topic, group = f"ops-lag-{unique}", f"streamml-test-{unique}"
    ensure_topics({"bootstrap.servers": kafka_bootstrap}, [topic], 3, 1)
    now = int(time.time() * 1000)
    _produce(kafka_bootstrap, topic, {0: [now - 90_000 + i * 1000 for i in range(60)],
                                      1: [now - 10_000 + i for i in range(40)],
                                      2: [now - 5_000 + i for i in range(25)]})
    _commit(kafka_bootstrap, group, {(topic, 0): 30, (topic, 1): 40})  # partition 2 never committed

    probe = LagProbe({"bootstrap.servers": kafka_bootstrap}, prefix=group)
    try:
        rows = {r.partition: r for r in probe.measure() if r.topic == topic}
        measured_at = time.time() * 1000
    finally:
        probe.close()
    assert set(rows) == {0, 1}  # lag is reported for what a group committed
    assert (rows[0].committed, rows[0].end, rows[0].messages) == (30, 60, 30)
    assert abs(rows[0].seconds - (measured_at - (now - 90_000 + 30_000)) / 1000) < 2.0
    assert (rows[1].messages, rows[1].seconds) == (0, 0.0)


@pytest.fixture
def fake_process_metrics():
    """A /metrics endpoint with streamml_* series the views read, which the test moves by hand."""
    registry = CollectorRegistry()
    events = Counter("streamml_features_events_total", "x", ["topic"], registry=registry)
    latency = Histogram("streamml_inference_request_latency_seconds", "x", ["endpoint"], registry=registry,
                        buckets=(0.001, 0.005, 0.01, 0.05))
    port = free_port()
    server, _ = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield f"http://127.0.0.1:{port}/metrics", events, latency
    server.shutdown()


def _metric(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def test_ops_service_exports_lag_and_serves_views_from_what_it_scraped(
        kafka_bootstrap, unique, tmp_path: Path, fake_process_metrics):
    url, events, latency = fake_process_metrics
    topic, group = f"ops-svc-{unique}", f"streamml-svc-{unique}"
    ensure_topics({"bootstrap.servers": kafka_bootstrap}, [topic], 1, 1)
    _produce(kafka_bootstrap, topic, {0: [int(time.time() * 1000) - 20_000] * 10})
    _commit(kafka_bootstrap, group, {(topic, 0): 4})

    port = free_port()
    env = {**os.environ, "STREAMML_HOME": str(tmp_path), "STREAMML_KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
           "STREAMML_OPS_PORT": str(port), "STREAMML_OPS_INTERVAL_S": "0.5", "STREAMML_OPS_GROUP_PREFIX": group,
           "STREAMML_OPS_TARGETS": f"fake={url},gone=http://127.0.0.1:{free_port()}/metrics"}
    log = open(tmp_path / "ops.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "run", "ops"], env=env, stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{base}/healthz").json()["rounds"] >= 2, 30, "ops rounds")
        for _ in range(8):  # 100 events/s and 1 ms requests for about 4 s
            events.labels("clickstream.events").inc(50)
            for _ in range(20):
                latency.labels("predict").observe(0.0008)
            time.sleep(0.5)

        text = httpx.get(f"{base}/metrics").text
        assert _metric(text, "streamml_kafka_consumer_lag_messages", group=group, topic=topic, partition="0") == 6
        assert 18 < _metric(text, "streamml_kafka_consumer_lag_seconds", group=group, topic=topic) < 40
        assert _metric(text, "streamml_ops_target_up", target="fake") == 1
        assert _metric(text, "streamml_ops_target_up", target="gone") == 0

        views = httpx.get(f"{base}/api/views", params={"minutes": 5}).json()
        panels = {p["id"]: p for v in views["views"] for p in v["panels"]}
        [rate] = panels["pipeline.events"]["series"]
        recent = [v for v in rate["values"][-4:] if v is not None]
        assert rate["label"] == "clickstream.events" and recent and all(80 <= v <= 120 for v in recent), (rate, views["timestamps"])
        p99 = {s["label"]: s["values"][-1] for s in panels["serving.latency"]["series"]}
        assert p99["p99 predict"] is not None and 0.5 < p99["p99 predict"] <= 1.0  # ms, inside the first bucket
        [lag] = panels["pipeline.lag_messages"]["series"]
        assert lag["label"] == group and lag["values"][-1] == 6
        assert all(len(s["values"]) == len(views["timestamps"]) for p in panels.values() for s in p["series"])

        summary = httpx.get(f"{base}/api/summary").json()
        assert summary["groups"] == [{"group": group, "messages": 6, "seconds": summary["groups"][0]["seconds"],
                                      "partitions": 1}]
        assert {t["name"]: t["up"] for t in summary["targets"]} == {"fake": True, "gone": False}
        assert "Connection refused" in next(t["error"] for t in summary["targets"] if t["name"] == "gone")

        page = httpx.get(f"{base}/dashboard")
        assert page.status_code == 200 and "<html" in page.text.lower()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, (tmp_path / "ops.log").read_text()

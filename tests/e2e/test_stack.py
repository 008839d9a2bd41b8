"""`streamml up --demo` / `status` / `down` on free ports: real Tansu, Redis, registry and load generator."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis as redis_lib
from confluent_kafka import Consumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext
from prometheus_client.parser import text_string_to_metric_families

from schemas.topics import CLICKSTREAM
from tests.browser import artifacts_dir, render
from tests.conftest import FAST_GROUP
from tests.pgkit import DDL, sql, user
from tests.servers import free_port, port_open, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def stack_env(tmp_path: Path):
    kafka, redis, registry, flow_metrics = free_port(), free_port(), free_port(), free_port()
    inference, learner_metrics, drift_metrics, ops = free_port(), free_port(), free_port(), free_port()
    cdc_metrics, loadgen_metrics = free_port(), free_port()
    env = {
        **os.environ,
        "STREAMML_HOME": str(tmp_path / "home"),
        "STREAMML_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{kafka}",
        "STREAMML_REDIS_URL": f"redis://127.0.0.1:{redis}/0",
        "STREAMML_SCHEMA_REGISTRY_URL": f"http://127.0.0.1:{registry}",
        "STREAMML_REGISTRY_PORT": str(registry),
        "STREAMML_FEATURES_METRICS_PORT": str(flow_metrics),
        "STREAMML_INFERENCE_PORT": str(inference),
        "STREAMML_LEARNER_METRICS_PORT": str(learner_metrics),
        "STREAMML_DRIFT_METRICS_PORT": str(drift_metrics),
        "STREAMML_OPS_PORT": str(ops),
        "STREAMML_OPS_INTERVAL_S": "1",
        "STREAMML_CDC_METRICS_PORT": str(cdc_metrics),
        "STREAMML_LOADGEN_METRICS_PORT": str(loadgen_metrics),
        "COLUMNS": "200",
    }
    yield env, {"kafka": kafka, "redis": redis, "registry": registry, "inference": inference, "ops": ops}
    _cli(env, "down")


def test_up_demo_status_down_round_trip(stack_env, shop_db):
    env, ports = stack_env
    sql(shop_db, DDL, user("pg-u1", "premium", "PT"))
    first = _cli(env, "up", "--demo", "--rate", "100", "--cdc-dsn", shop_db)
    assert first.returncode == 0, first.stderr + first.stdout
    assert "started" in first.stdout

    second = _cli(env, "up", "--demo", "--rate", "100")
    assert second.returncode == 0, second.stderr
    assert "already running" in second.stdout

    deadline = time.monotonic() + 60
    while True:
        report = json.loads(_cli(env, "status", "--json").stdout)
        if report["topics"].get(CLICKSTREAM.name, 0) > 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    names = {row["name"]: row for row in report["processes"]}
    assert {"broker", "redis", "registry", "features", "inference", "learner", "drift", "ops", "loadgen",
            "cdc"} <= set(names)
    assert all(row["alive"] and row["ready"] for row in names.values()), names
    assert report["topics"][CLICKSTREAM.name] > 0
    assert f"{CLICKSTREAM.name}.dlq" in report["topics"]
    load_metrics = httpx.get(f"http://127.0.0.1:{names['loadgen']['metrics_port']}/metrics", timeout=10).text
    assert f'streamml_loadgen_records_total{{outcome="delivered",topic="{CLICKSTREAM.name}"}}' in load_metrics

    # Any Kafka client with Confluent's own Avro deserializer reads the demo events.
    consumer = Consumer({"bootstrap.servers": f"127.0.0.1:{ports['kafka']}", "group.id": "e2e-reader",
                         "auto.offset.reset": "earliest", **FAST_GROUP})
    consumer.subscribe([CLICKSTREAM.name])
    deserialize = AvroDeserializer(SchemaRegistryClient({"url": f"http://127.0.0.1:{ports['registry']}"}))
    decoded = []
    deadline = time.monotonic() + 30
    while len(decoded) < 5 and time.monotonic() < deadline:
        msg = consumer.poll(1.0)
        if msg is None or msg.error():
            continue
        decoded.append(deserialize(msg.value(), SerializationContext(msg.topic(), MessageField.VALUE)))
    consumer.close()
    assert len(decoded) == 5
    assert all(event["user_id"] and event["event_type"] for event in decoded)

    # The feature flow turns the demo traffic into online features.
    client = redis_lib.Redis(port=ports["redis"])
    deadline = time.monotonic() + 60
    while not list(client.scan_iter("feat:user:*", count=100)) and time.monotonic() < deadline:
        time.sleep(0.5)
    user_key = next(client.scan_iter("feat:user:*", count=100))
    assert int(client.hget(user_key, "_ts")) > 0

    # ... which the inference service serves (auth is off only because the embedded stack says so).
    user_id = user_key.decode().rsplit(":", 1)[1]
    answer = httpx.post(f"http://127.0.0.1:{ports['inference']}/v1/predict",
                        json={"user_id": user_id, "item_id": "any"}, timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["feature_age_ms"] is not None

    # Rows of a real PostgreSQL reach Redis through the CDC reader `up --cdc-dsn` started: snapshot, then changes.
    wait_for(lambda: client.hget("feat:user:pg-u1", "tier") == b"premium", 60, "the snapshot row's tier in Redis")
    sql(shop_db, user("pg-u2", "plus", "NL"), "UPDATE users SET country = 'ES' WHERE user_id = 'pg-u1'")
    wait_for(lambda: client.hget("feat:user:pg-u2", "tier") == b"plus"
             and client.hget("feat:user:pg-u1", "country") == b"ES", 60, "a live change in Redis")

    _check_ops(env, f"http://127.0.0.1:{ports['ops']}", names["features"]["pid"])

    stopped = _cli(env, "down")
    assert stopped.returncode == 0
    for name in ("broker", "redis", "registry", "features", "inference", "learner", "drift", "ops", "loadgen", "cdc"):
        assert name in stopped.stdout
    assert not port_open(ports["kafka"]) and not port_open(ports["redis"]) and not port_open(ports["registry"])
    after = json.loads(_cli(env, "status", "--json").stdout)
    assert after["processes"] == []


def _flow_lag(ops: str) -> tuple[float, float] | None:
    """(messages, seconds) behind for the feature flow's group, from the ops service's /metrics."""
    messages = seconds = None
    for family in text_string_to_metric_families(httpx.get(f"{ops}/metrics", timeout=5).text):
        for sample in family.samples:
            if sample.labels.get("group") != "streamml-features":
                continue
            if sample.name == "streamml_kafka_consumer_lag_messages":
                messages = (messages or 0) + sample.value
            elif sample.name == "streamml_kafka_consumer_lag_seconds":
                seconds = max(seconds or 0, sample.value)
    return None if messages is None else (messages, seconds)


def _check_ops(env: dict, ops: str, flow_pid: int) -> None:
    """Lag, freshness and the dashboard with live data; a stopped flow's lag grows within seconds."""
    wait_for(lambda: _flow_lag(ops) is not None, 60, "the flow's lag in ops /metrics")
    report = json.loads(_cli(env, "status", "--json").stdout)["ops"]
    assert "streamml-features" in {g["group"] for g in report["groups"]}, report
    wait_for(lambda: httpx.get(f"{ops}/api/summary").json()["freshness_ms"].get("p99") is not None, 60,
             "freshness in the ops summary")
    table = _cli(env, "status").stdout
    assert "consumer lag" in table and "streamml-features" in table and "feature freshness" in table

    dom = render(f"{ops}/dashboard?minutes=15", artifacts_dir() / "dashboard-live.png")
    points = {re.search(r'data-panel="([^"]+)"', tag).group(1): re.search(r'data-points="(\d+)"', tag).group(1)
              for tag in re.findall(r"<[^>]*data-panel=[^>]*>", dom) if "data-points" in tag}
    assert int(points.get("pipeline.events", 0)) > 0 and int(points.get("pipeline.lag_messages", 0)) > 0, points
    assert int(points.get("serving.requests", 0)) > 0, points
    assert 'data-error' not in dom.split("<body", 1)[1].split(">", 1)[0]

    before = _flow_lag(ops)
    os.kill(flow_pid, signal.SIGSTOP)
    try:
        stopped_at = time.monotonic()
        wait_for(lambda: (lag := _flow_lag(ops)) is not None and lag[1] > before[1] + 5 and lag[0] > before[0],
                 30, "the stopped flow's lag to grow")
        grew_within = time.monotonic() - stopped_at
        views = httpx.get(f"{ops}/api/views", params={"minutes": 5}).json()
        panel = next(p for v in views["views"] for p in v["panels"] if p["id"] == "pipeline.lag_seconds")
        flow = next(s for s in panel["series"] if s["label"] == "streamml-features")
        assert flow["values"][-1] > 5
        assert grew_within < 20
    finally:
        os.kill(flow_pid, signal.SIGCONT)


def test_up_refuses_a_port_taken_by_a_foreign_process(stack_env):
    env, ports = stack_env
    import socket

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports["redis"]))
        squatter.listen()
        result = _cli(env, "up")
    assert result.returncode == 2
    assert f"port {ports['redis']}" in result.stderr and "redis" in result.stderr

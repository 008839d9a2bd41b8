"""`streamml up --demo` / `status` / `down` on free ports: real Tansu, Redis, registry and load generator."""

from __future__ import annotations

import json
import os
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

from schemas.topics import CLICKSTREAM
from tests.conftest import FAST_GROUP
from tests.servers import free_port, port_open

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture
def stack_env(tmp_path: Path):
    kafka, redis, registry, flow_metrics = free_port(), free_port(), free_port(), free_port()
    inference, learner_metrics, drift_metrics = free_port(), free_port(), free_port()
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
        "COLUMNS": "200",
    }
    yield env, {"kafka": kafka, "redis": redis, "registry": registry, "inference": inference}
    _cli(env, "down")


def test_up_demo_status_down_round_trip(stack_env):
    env, ports = stack_env
    first = _cli(env, "up", "--demo", "--rate", "100")
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
    assert {"broker", "redis", "registry", "features", "inference", "learner", "drift", "loadgen"} <= set(names)
    assert all(row["alive"] and row["ready"] for row in names.values()), names
    assert report["topics"][CLICKSTREAM.name] > 0
    assert f"{CLICKSTREAM.name}.dlq" in report["topics"]

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

    stopped = _cli(env, "down")
    assert stopped.returncode == 0
    for name in ("broker", "redis", "registry", "features", "inference", "learner", "drift", "loadgen"):
        assert name in stopped.stdout
    assert not port_open(ports["kafka"]) and not port_open(ports["redis"]) and not port_open(ports["registry"])
    after = json.loads(_cli(env, "status", "--json").stdout)
    assert after["processes"] == []


def test_up_refuses_a_port_taken_by_a_foreign_process(stack_env):
    env, ports = stack_env
    import socket

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports["redis"]))
        squatter.listen()
        result = _cli(env, "up")
    assert result.returncode == 2
    assert f"port {ports['redis']}" in result.stderr and "redis" in result.stderr

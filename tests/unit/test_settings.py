"""Settings come from STREAMML_* once; Kafka client settings pass through; secrets never printed."""

from __future__ import annotations

import pytest

from schemas.errors import ConfigError
from streams.settings import kafka_passthrough, load_settings


def test_defaults_describe_the_embedded_stack(monkeypatch):
    for name in ("STREAMML_KAFKA_BOOTSTRAP_SERVERS", "STREAMML_REDIS_URL", "STREAMML_HOME"):
        monkeypatch.delenv(name, raising=False)
    s = load_settings()
    assert s.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.schema_registry_url == "http://127.0.0.1:8081"
    assert (s.inference_port, s.ops_port) == (8000, 8001)
    assert s.home.name == ".streamml" and s.home.is_absolute()


def test_kafka_security_settings_pass_through_to_every_client(monkeypatch):
    monkeypatch.setenv("STREAMML_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("STREAMML_KAFKA_SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("STREAMML_KAFKA_BOOTSTRAP_SERVERS", "k1:9093,k2:9093")
    config = load_settings().kafka_config(**{"group.id": "g"})
    assert config == {"bootstrap.servers": "k1:9093,k2:9093", "security.protocol": "SASL_SSL",
                      "sasl.password": "hunter2", "group.id": "g"}


def test_redacted_settings_hide_secrets(monkeypatch):
    monkeypatch.setenv("STREAMML_KAFKA_SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("STREAMML_REDIS_URL", "redis://:s3cret@redis:6379/0")
    text = str(load_settings().redacted())
    assert "hunter2" not in text and "s3cret" not in text


def test_passthrough_maps_underscores_to_dots():
    assert kafka_passthrough({"STREAMML_KAFKA_SSL_CA_LOCATION": "/ca.pem", "OTHER": "x"}) == {
        "ssl.ca.location": "/ca.pem"
    }


def test_invalid_setting_is_a_config_error(monkeypatch):
    monkeypatch.setenv("STREAMML_TOPIC_PARTITIONS", "zero")
    with pytest.raises(ConfigError, match="topic_partitions"):
        load_settings()


def test_the_demo_batches_its_traffic_for_tansu_unless_told_otherwise(monkeypatch):
    from services.stack.embedded import _demo_env

    monkeypatch.delenv("STREAMML_LOADGEN_LINGER_MS", raising=False)
    assert load_settings().loadgen_linger_ms == 5  # `streamml produce` alone: small batches, low latency
    assert _demo_env(True)["STREAMML_LOADGEN_LINGER_MS"] == "100" and _demo_env(False) == {}
    monkeypatch.setenv("STREAMML_LOADGEN_LINGER_MS", "20")
    assert _demo_env(True)["STREAMML_LOADGEN_LINGER_MS"] == "20"
    assert load_settings().loadgen_linger_ms == 20

"""The embedded schema registry as a real process, driven by confluent-kafka's own client and serdes."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext

from schemas.errors import IncompatibleSchemaError
from schemas.registry import RegistryClient
from schemas.serde import TopicSerde
from schemas.topics import CLICKSTREAM, TopicSpec
from tests.servers import free_port, wait_for

pytestmark = pytest.mark.integration

VND = "application/vnd.schemaregistry.v1+json"
TS_MS = 1_700_000_000_123


@contextmanager
def own_registry(home: Path, **env: str) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """A private registry process (same launch as the shared `registry_url` fixture) for restart/auth tests."""
    port = free_port()
    log_path = home / f"registry-{port}.log"
    full_env = {**os.environ, "STREAMML_HOME": str(home), "STREAMML_REGISTRY_PORT": str(port), **env}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "services.registry"], env=full_env, stdout=log,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: httpx.get(f"{url}/healthz", timeout=1).status_code == 200, 30, "schema registry")
        yield url, proc, log_path
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def record_schema(*extra_fields: dict[str, Any]) -> str:
    return json.dumps({"type": "record", "name": "Order", "namespace": "t",
                       "fields": [{"name": "id", "type": "string"}, *extra_fields]})


def clickstream_event() -> dict[str, Any]:
    return {
        "event_id": "e-1", "user_id": "u-1", "session_id": "s-1", "event_type": "purchase", "item_id": "i-9",
        "price": 12.5, "ts": TS_MS, "page": "/item/i-9", "referrer": None, "device": "mobile", "country": "DE",
        "props": {"campaign": "spring"},
    }


def private_topic(unique: str) -> TopicSpec:
    """The Clickstream contract on a topic (and so a subject) of this test only."""
    return TopicSpec(f"clickstream.events.{unique}", "clickstream.avsc", key_field="user_id")


# --- the REST subset through confluent-kafka's client ------------------------------------------------------
def test_register_lookup_versions_and_latest_through_the_confluent_client(registry_url: str, unique: str):
    client = SchemaRegistryClient({"url": registry_url})
    subject = f"orders-{unique}-value"
    first_id = client.register_schema(subject, Schema(record_schema(), "AVRO"))
    assert client.register_schema(subject, Schema(record_schema(), "AVRO")) == first_id
    v2 = record_schema({"name": "note", "type": ["null", "string"], "default": None})
    second_id = client.register_schema(subject, Schema(v2, "AVRO"))
    assert second_id > first_id
    assert client.get_versions(subject) == [1, 2]
    assert subject in client.get_subjects()

    latest = client.get_latest_version(subject)
    assert (latest.schema_id, latest.version, latest.subject) == (second_id, 2, subject)
    assert json.loads(latest.schema.schema_str) == json.loads(v2)
    assert client.get_version(subject, 1).schema_id == first_id
    found = SchemaRegistryClient({"url": registry_url}).lookup_schema(subject, Schema(record_schema(), "AVRO"))
    assert (found.schema_id, found.version) == (first_id, 1)
    assert json.loads(SchemaRegistryClient({"url": registry_url}).get_schema(first_id).schema_str) == json.loads(
        record_schema()
    )
    assert client.get_schema_types() == ["AVRO"]


def test_same_schema_under_another_subject_reuses_the_id(registry_url: str, unique: str):
    client = SchemaRegistryClient({"url": registry_url})
    schema = Schema(record_schema({"name": unique, "type": "int", "default": 0}), "AVRO")
    a = client.register_schema(f"a-{unique}", schema)
    b = client.register_schema(f"b-{unique}", schema)
    assert a == b
    assert sorted(client.get_subjects_by_schema_id(a)) == [f"a-{unique}", f"b-{unique}"]
    assert {(v.subject, v.version) for v in client.get_schema_versions(a)} == {(f"a-{unique}", 1), (f"b-{unique}", 1)}


def test_new_required_field_is_refused_with_409_naming_the_field(registry_url: str, unique: str):
    client = SchemaRegistryClient({"url": registry_url})
    subject = f"orders-{unique}-value"
    client.register_schema(subject, Schema(record_schema(), "AVRO"))
    with pytest.raises(SchemaRegistryError) as refused:
        client.register_schema(subject, Schema(record_schema({"name": "discount", "type": "double"}), "AVRO"))
    assert refused.value.http_status_code == 409 and refused.value.error_code == 409
    assert "Order.discount: field added without a default" in refused.value.error_message
    assert client.get_versions(subject) == [1]


def test_removed_enum_symbol_is_refused_through_our_client_naming_the_field(registry_url: str, unique: str):
    ours = RegistryClient(registry_url)
    subject = f"clicks-{unique}-value"
    ours.register(subject, CLICKSTREAM.schema)
    narrowed = copy.deepcopy(CLICKSTREAM.schema)
    event_type = next(f for f in narrowed["fields"] if f["name"] == "event_type")["type"]
    event_type["symbols"].remove("search")
    del event_type["default"]
    with pytest.raises(IncompatibleSchemaError, match="Clickstream.event_type: enum EventType lost symbol"):
        ours.register(subject, narrowed)
    assert ours.is_compatible(subject, narrowed) is False


def test_compatibility_endpoints_answer_with_messages(registry_url: str, unique: str):
    client = SchemaRegistryClient({"url": registry_url})
    subject = f"orders-{unique}-value"
    client.register_schema(subject, Schema(record_schema(), "AVRO"))
    bad = Schema(record_schema({"name": "qty", "type": "int"}), "AVRO")
    good = Schema(record_schema({"name": "qty", "type": "int", "default": 1}), "AVRO")
    assert client.test_compatibility(subject, bad) is False
    assert client.test_compatibility(subject, good) is True
    assert client.test_compatibility_all_versions(subject, good) is True
    answer = httpx.post(f"{registry_url}/compatibility/subjects/{subject}/versions/1?verbose=true",
                        json=bad.to_dict()).json()
    assert answer == {"is_compatible": False, "messages": ["Order.qty: field added without a default"]}


def test_subject_config_changes_the_level_in_force(registry_url: str, unique: str):
    client = SchemaRegistryClient({"url": registry_url})
    subject = f"orders-{unique}-value"
    client.register_schema(subject, Schema(record_schema(), "AVRO"))
    assert client.get_compatibility(subject) == "BACKWARD"  # the global default
    assert client.set_compatibility(subject, "NONE") == {"compatibility": "NONE"}
    assert client.get_compatibility(subject) == "NONE"
    client.register_schema(subject, Schema(record_schema({"name": "qty", "type": "int"}), "AVRO"))
    assert client.get_versions(subject) == [1, 2]
    assert httpx.get(f"{registry_url}/mode").json() == {"mode": "READWRITE"}


def test_soft_then_permanent_delete(registry_url: str, unique: str):
    client = SchemaRegistryClient({"url": registry_url})
    subject = f"orders-{unique}-value"
    first = client.register_schema(subject, Schema(record_schema(), "AVRO"))
    client.register_schema(subject, Schema(record_schema({"name": "x", "type": "int", "default": 0}), "AVRO"))
    assert client.delete_version(subject, 2) == 2
    assert client.get_versions(subject) == [1]
    assert client.delete_subject(subject) == [1]
    assert subject not in client.get_subjects()
    assert subject in client.get_subjects(deleted=True)
    assert httpx.get(f"{registry_url}/schemas/ids/{first}").status_code == 200  # old records still decode
    assert client.delete_subject(subject, permanent=True) == [1, 2]
    with pytest.raises(SchemaRegistryError) as gone:
        client.get_versions(subject)
    assert gone.value.error_code == 40401


def test_invalid_and_non_avro_schemas_get_422_with_a_reason(registry_url: str, unique: str):
    client = SchemaRegistryClient({"url": registry_url})
    with pytest.raises(SchemaRegistryError) as invalid:
        client.register_schema(f"bad-{unique}", Schema('{"type": "record", "name": "R", "fields": [{"name": '
                                                       '"x", "type": "Nope"}]}', "AVRO"))
    assert (invalid.value.http_status_code, invalid.value.error_code) == (422, 42201)
    assert "Nope" in invalid.value.error_message
    with pytest.raises(SchemaRegistryError) as protobuf:
        client.register_schema(f"bad-{unique}", Schema('syntax = "proto3";', "PROTOBUF"))
    assert protobuf.value.error_code == 42201 and "AVRO schemas only" in protobuf.value.error_message


def test_not_found_answers_carry_confluent_error_codes(registry_url: str, unique: str):
    client = SchemaRegistryClient({"url": registry_url})
    cases = [
        (lambda: client.get_versions(f"none-{unique}"), 40401),
        (lambda: client.lookup_schema(f"none-{unique}", Schema(record_schema(), "AVRO")), 40401),
        (lambda: client.get_schema(987_654_321), 40403),
    ]
    for call, code in cases:
        with pytest.raises(SchemaRegistryError) as missing:
            call()
        assert (missing.value.http_status_code, missing.value.error_code) == (404, code)


def test_url_encoded_subject_names_round_trip(registry_url: str, unique: str):
    client = SchemaRegistryClient({"url": registry_url})
    subject = f"team/orders {unique}:value"
    schema_id = client.register_schema(subject, Schema(record_schema(), "AVRO"))
    assert client.get_versions(subject) == [1]
    assert client.lookup_schema(subject, Schema(record_schema(), "AVRO")).schema_id == schema_id
    assert subject in client.get_subjects()


def test_media_types_confluent_by_default_plain_json_on_request(registry_url: str, unique: str):
    body = json.dumps({"schema": record_schema()})
    registered = httpx.post(f"{registry_url}/subjects/mt-{unique}/versions", content=body,
                            headers={"Content-Type": VND, "Accept": VND})
    assert registered.status_code == 200 and registered.headers["content-type"] == VND
    plain = httpx.get(f"{registry_url}/subjects/mt-{unique}/versions/latest", headers={"Accept": "application/json"})
    assert plain.headers["content-type"] == "application/json" and plain.json()["version"] == 1
    raw = httpx.get(f"{registry_url}/subjects/mt-{unique}/versions/1/schema")
    assert json.loads(raw.text) == json.loads(record_schema())


def test_healthz_and_metrics(registry_url: str):
    assert httpx.get(f"{registry_url}/healthz").json() == {"status": "ok"}
    httpx.get(f"{registry_url}/subjects")
    text = httpx.get(f"{registry_url}/metrics").text
    assert 'streamml_registry_requests_total{method="GET",status="200"}' in text
    assert "streamml_registry_request_seconds_bucket" in text


# --- durability and access --------------------------------------------------------------------------------
def test_ids_and_config_survive_a_restart_and_sigterm_closes_cleanly(tmp_path: Path):
    with own_registry(tmp_path) as (url, proc, log_path):
        client = SchemaRegistryClient({"url": url})
        first = client.register_schema("orders-value", Schema(record_schema(), "AVRO"))
        client.set_compatibility(level="FULL")
        proc.terminate()
        assert proc.wait(10) == 0
    assert "registry stopped" in log_path.read_text()
    assert (tmp_path / "registry" / "registry.db").exists()

    with own_registry(tmp_path) as (url, _proc, _log):
        client = SchemaRegistryClient({"url": url})
        assert json.loads(client.get_schema(first).schema_str) == json.loads(record_schema())
        assert client.get_compatibility() == "FULL"
        assert client.get_versions("orders-value") == [1]
        later = client.register_schema("other-value", Schema(record_schema({"name": "n", "type": "int",
                                                                              "default": 0}), "AVRO"))
        assert later > first


def test_admin_key_guards_changes_but_not_reads(tmp_path: Path):
    with own_registry(tmp_path, STREAMML_REGISTRY_ADMIN_KEYS="k-one, k-two") as (url, _proc, _log):
        body = {"schema": record_schema()}
        missing = httpx.post(f"{url}/subjects/guarded/versions", json=body)
        wrong = httpx.post(f"{url}/subjects/guarded/versions", json=body, headers={"X-API-Key": "nope"})
        assert (missing.status_code, missing.json()["error_code"]) == (401, 40101)
        assert "X-API-Key" in missing.json()["message"]
        assert wrong.status_code == 403
        ok = httpx.post(f"{url}/subjects/guarded/versions", json=body, headers={"X-API-Key": "k-two"})
        assert ok.json() == {"id": 1}
        assert httpx.put(f"{url}/config", json={"compatibility": "NONE"}).status_code == 401
        assert httpx.delete(f"{url}/subjects/guarded").status_code == 401

        basic = SchemaRegistryClient({"url": url, "basic.auth.user.info": "admin:k-one"})
        assert basic.register_schema("guarded-2", Schema(record_schema(), "AVRO")) == 1
        anonymous = SchemaRegistryClient({"url": url})
        assert anonymous.get_versions("guarded") == [1] and anonymous.get_schema(1).schema_str


# --- wire interop with confluent-kafka's serializers ---------------------------------------------------------
def test_confluent_avro_serializer_output_decodes_with_our_serde(registry_url: str, unique: str):
    spec = private_topic(unique)
    client = SchemaRegistryClient({"url": registry_url})
    serializer = AvroSerializer(client, spec.schema_str)
    data = serializer(clickstream_event(), SerializationContext(spec.name, MessageField.VALUE))
    ours = TopicSerde(spec, RegistryClient(registry_url))
    assert ours.deserialize(data) == clickstream_event()


def test_our_serde_output_decodes_with_confluent_avro_deserializer(registry_url: str, unique: str):
    spec = private_topic(unique)
    data = TopicSerde(spec, RegistryClient(registry_url)).serialize(clickstream_event())
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": registry_url}))
    decoded = deserializer(data, SerializationContext(spec.name, MessageField.VALUE))
    expected = clickstream_event()
    # our codec keeps timestamps as int millis; confluent's applies the logical type
    assert decoded.pop("ts") == datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=expected.pop("ts"))
    assert decoded == expected


def test_records_written_by_confluent_with_an_older_schema_decode_to_todays_shape(registry_url: str, unique: str):
    spec = private_topic(unique)
    older = copy.deepcopy(spec.schema)
    older["fields"] = [f for f in older["fields"] if f["name"] not in ("props", "referrer")]
    client = SchemaRegistryClient({"url": registry_url})
    old_event = {k: v for k, v in clickstream_event().items() if k not in ("props", "referrer")}
    data = AvroSerializer(client, json.dumps(older))(old_event, SerializationContext(spec.name, MessageField.VALUE))

    ours = TopicSerde(spec, RegistryClient(registry_url))
    assert ours.schema_id != int.from_bytes(data[1:5], "big")  # the contract registered as version 2
    assert ours.deserialize(data) == {**old_event, "props": {}, "referrer": None}
    assert client.get_versions(spec.subject) == [1, 2]

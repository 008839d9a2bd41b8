"""Topic provisioning and the dead-letter helper against a real Tansu broker."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer, Producer

from schemas.codec import frame
from schemas.errors import BrokerError, DecodeError
from schemas.serde import TopicSerde
from schemas.topics import CLICKSTREAM
from streams.kafka.admin import ensure_topics
from streams.kafka.dlq import DeadLetter, DeadLetterPublisher, parse_headers
from tests.conftest import FAST_GROUP
from tests.unit.test_codec import MemoryRegistry

pytestmark = pytest.mark.integration


def test_ensure_topics_creates_explicit_partitions_and_is_idempotent(kafka_bootstrap, unique):
    config = {"bootstrap.servers": kafka_bootstrap}
    names = [f"t-{unique}-a", f"t-{unique}-b"]
    assert ensure_topics(config, names, partitions=3) == {names[0]: 3, names[1]: 3}
    assert ensure_topics(config, names, partitions=7) == {names[0]: 3, names[1]: 3}


def test_unreachable_broker_is_a_clear_error():
    with pytest.raises(BrokerError, match="unreachable.*STREAMML_KAFKA_BOOTSTRAP_SERVERS"):
        ensure_topics({"bootstrap.servers": "127.0.0.1:1", "socket.timeout.ms": 500}, ["x"], 1, timeout_s=1)


def test_undecodable_record_lands_in_dlq_with_reason_and_original_bytes(kafka_bootstrap, unique):
    config = {"bootstrap.servers": kafka_bootstrap}
    source = f"src-{unique}"
    ensure_topics(config, [source, f"{source}.dlq"], partitions=1)
    bad_value = frame(4242, b"\x02garbage")
    serde = TopicSerde(CLICKSTREAM, MemoryRegistry())
    with pytest.raises(DecodeError) as err:
        serde.deserialize(bad_value, partition=0, offset=17)
    error = err.value
    error.topic = source  # the record came from our scratch topic

    sent = []
    publisher = DeadLetterPublisher(Producer({**config, "enable.idempotence": True}), on_sent=sent.append)
    publisher.publish(DeadLetter.from_error(error, key=b"u1", value=bad_value, timestamp_ms=123))
    assert publisher.flush() == 0 and len(sent) == 1

    consumer = Consumer({**config, "group.id": f"g-{unique}", "auto.offset.reset": "earliest", **FAST_GROUP})
    consumer.subscribe([f"{source}.dlq"])
    deadline, msg = time.monotonic() + 30, None
    while time.monotonic() < deadline:
        msg = consumer.poll(0.5)
        if msg is not None and not msg.error():
            break
    consumer.close()
    assert msg is not None and not msg.error()
    assert msg.key() == b"u1" and msg.value() == bad_value
    headers = parse_headers(msg.headers())
    assert headers["streamml.error.reason"] == "unknown_schema"
    assert "4242" in headers["streamml.error.detail"]
    assert headers["streamml.source.topic"] == source
    assert (headers["streamml.source.partition"], headers["streamml.source.offset"]) == ("0", "17")


def test_dead_letters_kafka_refuses_are_an_error_not_a_silent_loss(hangable_broker, unique):
    bootstrap = f"127.0.0.1:{hangable_broker.port}"
    ensure_topics({"bootstrap.servers": bootstrap}, [f"t-{unique}.dlq"], 1)
    publisher = DeadLetterPublisher(Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                                              "message.timeout.ms": 1500}))
    letter = DeadLetter(f"t-{unique}", 0, 7, b"k", b"v", "invalid_avro", "test")
    publisher.publish(letter)
    publisher.ensure_delivered()  # acknowledged: returns
    hangable_broker.pause()
    try:
        publisher.publish(letter)
        started = time.monotonic()
        with pytest.raises(BrokerError, match="refused 1 dead letter.*not committed"):
            publisher.ensure_delivered()
        assert time.monotonic() - started < 15
    finally:
        hangable_broker.resume()

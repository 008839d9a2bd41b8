"""The flow's shared consumer against a real Tansu broker: one consumer, reads fanned out per partition."""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, Producer

from streams.kafka.admin import ensure_topics
from streams.kafka.shared_consumer import SharedConsumer
from tests.conftest import FAST_GROUP

pytestmark = pytest.mark.integration

PER_PARTITION = 40


@pytest.fixture
def topics(kafka_bootstrap: str, unique: str) -> tuple[str, str]:
    """Two topics of 2 partitions; partition p of topic t holds values b"t:p:0" ... in offset order."""
    names = (f"shared-{unique}-a", f"shared-{unique}-b")
    ensure_topics({"bootstrap.servers": kafka_bootstrap}, list(names), partitions=2)
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 5})
    for n in range(PER_PARTITION):
        for topic in names:
            for p in range(2):
                producer.produce(topic, f"{topic}:{p}:{n}".encode(), partition=p)
    assert producer.flush(30) == 0
    return names


def _config(bootstrap: str, unique: str) -> dict:
    return {"bootstrap.servers": bootstrap, "group.id": f"g-{unique}", "enable.auto.commit": False,
            "fetch.wait.max.ms": 10, **FAST_GROUP}


def _read_all(shared: SharedConsumer, parts: list[tuple[str, int]], want: int, timeout_s: float = 30.0,
              only: set | None = None) -> dict[tuple[str, int], list]:
    got: dict[tuple[str, int], list] = {key: [] for key in parts}
    deadline = time.monotonic() + timeout_s
    while any(len(got[k]) < want for k in parts if only is None or k in only) and time.monotonic() < deadline:
        for key in parts:
            if only is None or key in only:
                got[key].extend(shared.read(*key))
    return got


def test_each_partition_reads_exactly_its_messages_in_order(kafka_bootstrap, unique, topics):
    shared = SharedConsumer(_config(kafka_bootstrap, unique), batch_size=25)
    parts = [(t, p) for t in topics for p in range(2)]
    for topic, p in parts:
        shared.assign(topic, p, OFFSET_BEGINNING)
    got = _read_all(shared, parts, PER_PARTITION)
    for (topic, p), msgs in got.items():
        assert [m.value() for m in msgs] == [f"{topic}:{p}:{n}".encode() for n in range(PER_PARTITION)]
        assert [m.offset() for m in msgs] == list(range(PER_PARTITION))
        assert {(m.topic(), m.partition()) for m in msgs} == {(topic, p)}
    assert all(shared.read(*key) == [] for key in parts)  # nothing more, nothing twice
    for key in parts[:-1]:
        assert shared.release(*key) is False
    assert shared.release(*parts[-1]) is True  # the last release closes the consumer


def test_seek_drops_what_was_buffered_and_reads_again_from_the_offset(kafka_bootstrap, unique, topics):
    shared = SharedConsumer(_config(kafka_bootstrap, unique), batch_size=1000)
    a0, b1 = (topics[0], 0), (topics[1], 1)
    shared.assign(*a0, OFFSET_BEGINNING)
    shared.assign(*b1, OFFSET_BEGINNING)
    first: list = []
    deadline = time.monotonic() + 30
    while len(first) < 5 and time.monotonic() < deadline:
        first += shared.read(*a0, max_messages=5 - len(first))
    assert [m.offset() for m in first] == list(range(5))
    assert shared._buffers[a0]  # fetched past offset 4: those buffered messages must not come back
    shared.seek(*a0, 2)
    again = _read_all(shared, [a0], PER_PARTITION - 2)[a0]
    assert [m.offset() for m in again] == list(range(2, PER_PARTITION))
    assert [m.offset() for m in _read_all(shared, [b1], PER_PARTITION)[b1]] == list(range(PER_PARTITION))
    shared.release(*a0)
    shared.release(*b1)


def test_a_partition_nobody_reads_is_paused_and_loses_nothing(kafka_bootstrap, unique, topics):
    shared = SharedConsumer(_config(kafka_bootstrap, unique), batch_size=10, max_buffered=8)
    busy, idle = (topics[0], 0), (topics[0], 1)
    shared.assign(*busy, OFFSET_BEGINNING)
    shared.assign(*idle, OFFSET_BEGINNING)
    got = _read_all(shared, [busy, idle], PER_PARTITION, only={busy})
    assert len(got[busy]) == PER_PARTITION
    assert shared._paused == {idle}  # its buffer passed max_buffered while only `busy` was read
    assert len(shared._buffers[idle]) <= 8 + 10  # at most one poll past the limit
    later = _read_all(shared, [idle], PER_PARTITION)[idle]
    assert [m.offset() for m in later] == list(range(PER_PARTITION))  # resumed; in order, none lost
    assert shared._paused == set()
    shared.release(*busy)
    shared.release(*idle)


def test_each_thread_gets_its_own_consumer_and_a_closed_one_is_forgotten(kafka_bootstrap, unique):
    config = _config(kafka_bootstrap, unique)
    mine = SharedConsumer.for_thread(config, batch_size=7)
    assert SharedConsumer.for_thread(config, batch_size=7) is mine
    assert SharedConsumer.for_thread(config, batch_size=8) is not mine
    other: list[SharedConsumer] = []
    thread = threading.Thread(target=lambda: other.append(SharedConsumer.for_thread(config, batch_size=7)))
    thread.start()
    thread.join()
    assert other[0] is not mine
    topic = f"shared-{unique}-solo"
    ensure_topics({"bootstrap.servers": kafka_bootstrap}, [topic], partitions=1)
    mine.assign(topic, 0, OFFSET_BEGINNING)
    assert mine.release(topic, 0) is True
    assert SharedConsumer.for_thread(config, batch_size=7) is not mine

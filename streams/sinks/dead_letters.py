"""Bytewax sink that publishes dead letters to `<topic>.dlq` (at least once)."""

from __future__ import annotations

from typing import Any

from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import Producer

from streams.kafka.dlq import DeadLetter, DeadLetterPublisher


class _Partition(StatelessSinkPartition[DeadLetter]):
    def __init__(self, kafka: dict[str, Any]):
        self._publisher = DeadLetterPublisher(Producer({**kafka, "enable.idempotence": True, "linger.ms": 5}))

    def write_batch(self, items: list[DeadLetter]) -> None:
        for letter in items:
            self._publisher.publish(letter)
        self._publisher.ensure_delivered()  # before the epoch can be committed

    def close(self) -> None:
        self._publisher.flush(30)


class DeadLetterSink(DynamicSink[DeadLetter]):
    def __init__(self, kafka: dict[str, Any]):
        self._kafka = kafka

    def build(self, step_id: str, worker_index: int, worker_count: int) -> _Partition:
        return _Partition(self._kafka)

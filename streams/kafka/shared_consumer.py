"""One librdkafka consumer for all the source partitions a worker thread reads, fanned out per partition.

A consumer per partition costs the broker one fetch request per partition every `fetch.wait.max.ms`,
busy or idle, and each blocking poll of an idle partition delays the next partition's turn. Measured
here with 12 partitions at `fetch.wait.max.ms=10`: 12 idle consumers took 31-71% of a core in Tansu,
one consumer for all 12 took 12%. So each worker thread shares one consumer: a partition's read
takes what is buffered for it, and only when its buffer is empty does the consumer poll (at most once
per `poll_s`), handing the other partitions what it fetched for them. Order within a partition is
librdkafka's; a partition whose buffer outgrows `max_buffered` is paused until it is read.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition

from streams.runtime.logging import get_logger

log = get_logger(__name__)

Key = tuple[str, int]  # (topic, partition)


class SharedConsumer:
    """A consumer whose partitions are assigned, read, sought and released one by one. Not thread-safe:
    use `for_thread`, which gives each thread its own."""

    def __init__(self, config: dict[str, Any], batch_size: int = 20000, poll_s: float = 0.005,
                 max_buffered: int | None = None):
        self._config = config
        self._batch_size = batch_size
        self._poll_s = poll_s
        self._max_buffered = max_buffered or 4 * batch_size
        self._consumer: Consumer | None = None
        self._buffers: dict[Key, deque[Message]] = {}
        self._paused: set[Key] = set()
        self._last_poll = 0.0

    @property
    def consumer(self) -> Consumer:
        if self._consumer is None:
            self._consumer = Consumer(self._config)
        return self._consumer

    def assign(self, topic: str, partition: int, offset: int) -> None:
        """Start reading `topic`/`partition` at `offset` (or a logical offset such as OFFSET_BEGINNING); a
        partition still assigned (its flow stopped without closing it) starts over at `offset`."""
        key = (topic, partition)
        if key in self._buffers:
            self._paused.discard(key)
            self.consumer.incremental_unassign([TopicPartition(topic, partition)])
        self._buffers[key] = deque()
        self.consumer.incremental_assign([TopicPartition(topic, partition, offset)])

    def read(self, topic: str, partition: int, max_messages: int | None = None) -> list[Message]:
        """What is buffered for the partition (up to `max_messages`); polls first when that is nothing."""
        key = (topic, partition)
        buffer = self._buffers[key]
        if not buffer and time.monotonic() - self._last_poll >= self._poll_s:
            self._poll()
        limit = self._batch_size if max_messages is None else max_messages
        if len(buffer) <= limit:
            out = list(buffer)
            buffer.clear()
        else:
            out = [buffer.popleft() for _ in range(limit)]
        if key in self._paused and len(buffer) < self._max_buffered // 2:
            self._paused.discard(key)
            self.consumer.resume([TopicPartition(topic, partition)])
        return out

    def _poll(self) -> None:
        msgs = self.consumer.consume(self._batch_size, self._poll_s)
        self._last_poll = time.monotonic()
        buffers = self._buffers
        for msg in msgs:
            if msg.error() is not None:  # librdkafka retries fetch errors itself; the partition sees none
                continue
            buffer = buffers.get((msg.topic(), msg.partition()))
            if buffer is not None:  # else released since the fetch: dropped, as librdkafka would
                buffer.append(msg)
        for key, buffer in buffers.items():
            if len(buffer) > self._max_buffered and key not in self._paused:
                self._paused.add(key)
                self.consumer.pause([TopicPartition(*key)])

    def seek(self, topic: str, partition: int, offset: int) -> None:
        """Read the partition again from `offset`: what was buffered for it is dropped."""
        self._buffers[(topic, partition)].clear()
        self.consumer.seek(TopicPartition(topic, partition, offset))

    def high_watermark(self, topic: str, partition: int) -> int | None:
        """The partition's end offset as of the last fetch response (no network round trip)."""
        try:
            return self.consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)[1]
        except KafkaException:
            return None

    def commit(self, topic: str, partition: int, offset: int) -> None:
        """Record the read position in the consumer group, asynchronously (for lag tools)."""
        self.consumer.commit(offsets=[TopicPartition(topic, partition, offset)], asynchronous=True)

    def release(self, topic: str, partition: int) -> bool:
        """Stop reading the partition. With the last one the consumer is closed and `for_thread` forgets it;
        True then."""
        key = (topic, partition)
        if self._buffers.pop(key, None) is not None and self._consumer is not None:
            self._paused.discard(key)
            try:
                self._consumer.incremental_unassign([TopicPartition(topic, partition)])
            except KafkaException as exc:
                log.warning("could not unassign a source partition", topic=topic, partition=partition,
                            error=str(exc))
        if self._buffers:
            return False
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
        with self._lock:
            for shared_key, shared in list(self._shared.items()):
                if shared is self:
                    del self._shared[shared_key]
        return True

    # --- one per thread ---------------------------------------------------------------------------
    _shared: dict[tuple[int, str], SharedConsumer] = {}
    _lock = threading.Lock()

    @classmethod
    def for_thread(cls, config: dict[str, Any], **options: Any) -> SharedConsumer:
        """This thread's consumer for `config` (Bytewax builds and polls a partition on its worker's thread)."""
        key = (threading.get_ident(), repr(sorted(config.items())) + repr(sorted(options.items())))
        with cls._lock:
            shared = cls._shared.get(key)
            if shared is None:
                shared = cls._shared[key] = cls(config, **options)
            return shared

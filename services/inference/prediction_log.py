"""Logs every prediction to `predictions` without ever blocking a response.

Requests hand records to a bounded in-process buffer (a full buffer drops and counts, it never waits);
one thread serializes them and hands them to an idempotent librdkafka producer, which retries while the
broker is away (no delivery timeout by default) so predictions made during an outage arrive later.
Shutdown drains the buffer and flushes; what could not be delivered in time is logged with its count.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from confluent_kafka import Producer

from schemas.errors import BrokerError, RegistryError, SchemaError, StreammlError
from schemas.serde import SchemaSource
from schemas.topics import PREDICTIONS
from services.inference import metrics
from services.producer import EventProducer
from streams.runtime.logging import get_logger
from streams.settings import Settings

log = get_logger(__name__)
_BATCH = 1000
_RETRY_S = 1.0
_DRAIN_EVERY_S = 0.02  # the thread wakes on a timer, not per record: no lock or thread switch per prediction


class PredictionLogger:
    """Bounded, non-blocking prediction log; `submit` from any thread, `close` once at shutdown."""

    def __init__(self, settings: Settings, registry: SchemaSource, *, capacity: int = 100_000,
                 delivery_timeout_ms: int = 0, producer_factory: Any = Producer):
        self._queue: deque[dict[str, Any]] = deque()  # append/popleft are atomic: no lock on the request path
        self._capacity = capacity
        # linger 50 ms: a logged prediction may wait a little, and big batches cost the broker far less per record
        overrides = {"message.timeout.ms": delivery_timeout_ms, "queue.buffering.max.messages": capacity,
                     "linger.ms": 50}
        self._new_producer = lambda: EventProducer(settings, registry, client_id="streamml-inference",
                                                   producer_factory=producer_factory, **overrides)
        self._producer = self._new_producer()
        self._held: list[dict[str, Any]] = []  # taken from the queue, not yet accepted by the producer
        self._stopping = threading.Event()
        self._seen = {"delivered": 0, "failed": 0}
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def submit(self, record: dict[str, Any]) -> bool:
        """Queue one PredictionLog record; False (and counted) if the buffer is full."""
        if len(self._queue) >= self._capacity:
            self.dropped += 1
            metrics.LOG_RECORDS.labels("dropped").inc()
            return False
        self._queue.append(record)
        metrics.LOG_RECORDS.labels("queued").inc()
        return True

    @property
    def buffered(self) -> int:
        return len(self._queue) + len(self._held)

    def stats(self) -> dict[str, Any]:
        stats = self._producer.stats()
        return {"buffered": self.buffered, "dropped": self.dropped, "in_flight": stats["in_flight"],
                "delivered": stats["delivered"], "failed": stats["failed"], "last_error": stats["last_error"]}

    def close(self, timeout_s: float = 10.0) -> int:
        """Drain the buffer and flush; returns how many records were not delivered."""
        deadline = time.monotonic() + timeout_s
        self._stopping.set()
        self._thread.join(max(deadline - time.monotonic(), 0.1))
        left = self.buffered
        try:
            left += self._producer.close(max(deadline - time.monotonic(), 0.1))
        except StreammlError as exc:
            log.error("prediction log producer failed at shutdown", error=str(exc))
        self._count_outcomes()
        if left:
            log.warning("prediction log closed with undelivered records", undelivered=left)
        return left

    # --- the thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            if not self._held:
                self._take()
            if self._held:
                self._send()
            self._producer.poll(0)
            self._count_outcomes()
            metrics.LOG_BUFFERED.set(self.buffered)
            if self._stopping.is_set() and not self._held and not self._queue:
                return
            if not self._queue:
                self._stopping.wait(_DRAIN_EVERY_S)

    def _take(self) -> None:
        while self._queue and len(self._held) < _BATCH:
            self._held.append(self._queue.popleft())

    def _send(self) -> None:
        done = 0
        try:
            for record in self._held:
                try:
                    self._producer.publish(PREDICTIONS, record)  # waits (never drops) while librdkafka is full
                except SchemaError as exc:  # this record can never be sent: count it, keep the others going
                    metrics.LOG_RECORDS.labels("failed").inc()
                    log.error("prediction record does not fit the PredictionLog schema", error=str(exc))
                done += 1
        except RegistryError as exc:  # schema id not known yet: hold everything and retry
            log.warning("prediction log waits for the schema registry", error=str(exc), held=len(self._held))
            self._stopping.wait(_RETRY_S)
        except BrokerError as exc:  # fatal producer error: what it held is counted failed; start a new one
            log.error("prediction log producer failed; starting a new one", error=str(exc))
            self._count_outcomes()
            self._producer.close(0)
            self._producer = self._new_producer()
            self._seen = {"delivered": 0, "failed": 0}
            self._stopping.wait(_RETRY_S)
        finally:
            del self._held[:done]

    def _count_outcomes(self) -> None:
        stats = self._producer.stats()
        for outcome in ("delivered", "failed"):
            delta = stats[outcome] - self._seen[outcome]
            if delta > 0:
                metrics.LOG_RECORDS.labels(outcome).inc(delta)
                self._seen[outcome] = stats[outcome]

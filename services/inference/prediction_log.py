"""Logs every prediction to `predictions` without ever blocking a response.

Requests append records to a bounded in-process buffer (a full buffer drops and counts; it never
waits). The event loop drains it in small slices right after the responses are written: Avro
encoding and a non-blocking hand-off to an idempotent librdkafka producer, no thread and no lock per
record (a drain thread cost ~2.5x the CPU per record here, and fought the requests for the GIL).
While the broker is away librdkafka keeps retrying (no delivery timeout by default) and, once its own
queue is full, records wait in the buffer: predictions made during an outage arrive later.
Shutdown drains the buffer and flushes; what could not be delivered in time is logged with its count.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

from confluent_kafka import Producer

from schemas.errors import BrokerError, RegistryError, SchemaError
from schemas.serde import SchemaSource
from schemas.topics import PREDICTIONS
from services.inference import metrics
from services.producer import EventProducer
from streams.runtime.logging import get_logger
from streams.settings import Settings

log = get_logger(__name__)
_SLICE = 25  # records per drain step: requests interleave between steps
_TICK_S = 0.05  # delivery reports, gauges and retries this often
_RETRY_S = 1.0
_QUEUED, _DROPPED = metrics.LOG_RECORDS.labels("queued"), metrics.LOG_RECORDS.labels("dropped")


class PredictionLogger:
    """Bounded, non-blocking prediction log owned by one event loop: `start`, `submit`..., `close`."""

    def __init__(self, settings: Settings, registry: SchemaSource, *, capacity: int = 100_000,
                 delivery_timeout_ms: int = 0, producer_factory: Any = Producer):
        self._pending: deque[dict[str, Any]] = deque()
        self._capacity = capacity
        # linger 50 ms: a logged prediction may wait a little, and big batches cost the broker far less per record
        overrides = {"message.timeout.ms": delivery_timeout_ms, "queue.buffering.max.messages": capacity,
                     "linger.ms": 50}
        self._new_producer = lambda: EventProducer(settings, registry, client_id="streamml-inference",
                                                   producer_factory=producer_factory, **overrides)
        self._producer = self._new_producer()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tick: asyncio.Task | None = None
        self._scheduled = False
        self._schema_ready = False
        self._seen = {"delivered": 0, "failed": 0}
        self.dropped = 0

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._tick = asyncio.create_task(self._ticks())

    def submit(self, record: dict[str, Any]) -> bool:
        """Buffer one PredictionLog record; False (and counted) if the buffer is full."""
        return self.submit_many([record]) == 1

    def submit_many(self, records: list[dict[str, Any]]) -> int:
        """Buffer records in order up to the buffer's capacity; the rest are dropped and counted. Returns how
        many were buffered (one call per batch of predictions: the metric and the scheduling once)."""
        room = max(self._capacity - len(self._pending), 0)
        taken = records if len(records) <= room else records[:room]
        if taken:
            self._pending.extend(taken)
            _QUEUED.inc(len(taken))
            self._schedule()
        if len(taken) < len(records):
            self.dropped += len(records) - len(taken)
            _DROPPED.inc(len(records) - len(taken))
        return len(taken)

    @property
    def buffered(self) -> int:
        return len(self._pending)

    def stats(self) -> dict[str, Any]:
        stats = self._producer.stats()
        return {"buffered": self.buffered, "dropped": self.dropped, "in_flight": stats["in_flight"],
                "delivered": stats["delivered"], "failed": stats["failed"], "last_error": stats["last_error"]}

    async def close(self, timeout_s: float = 10.0) -> int:
        """Drain the buffer and flush; returns how many records were not delivered."""
        deadline = time.monotonic() + timeout_s
        if self._tick is not None:
            self._tick.cancel()
        if not self._schema_ready:
            await self._fetch_schema()
        while self._pending and self._schema_ready and time.monotonic() < deadline:
            if not self._drain(limit=len(self._pending)):
                self._producer.poll(0.05)  # librdkafka full: wait for deliveries to make room
        left = len(self._pending)
        left += await asyncio.to_thread(self._producer.close, max(deadline - time.monotonic(), 0.1))
        self._count_outcomes()
        if left:
            log.warning("prediction log closed with undelivered records", undelivered=left)
        return left

    # --- on the event loop ------------------------------------------------------------------------
    def _schedule(self) -> None:
        if not self._scheduled and self._schema_ready and self._pending and self._loop is not None:
            self._scheduled = True
            self._loop.call_soon(self._step)

    def _step(self) -> None:
        self._scheduled = False
        if self._drain(_SLICE):
            self._schedule()

    def _drain(self, limit: int) -> bool:
        """Hand up to `limit` records to librdkafka; False when it is full (the rest stays buffered)."""
        for _ in range(min(limit, len(self._pending))):
            try:
                if not self._producer.publish(PREDICTIONS, self._pending[0], wait=False):
                    return False
            except SchemaError as exc:  # this record can never be sent: count it, keep the others going
                metrics.LOG_RECORDS.labels("failed").inc()
                log.error("prediction record does not fit the PredictionLog schema", error=str(exc))
            except BrokerError as exc:  # fatal producer error: what it held is counted failed; start anew
                log.error("prediction log producer failed; starting a new one", error=str(exc))
                self._count_outcomes()
                self._producer.close(0)
                self._producer = self._new_producer()
                self._seen = {"delivered": 0, "failed": 0}
                return False
            self._pending.popleft()
        return True

    async def _ticks(self) -> None:
        while True:
            if not self._schema_ready:
                await self._fetch_schema()
            self._producer.poll(0)  # delivery reports
            self._count_outcomes()
            metrics.LOG_BUFFERED.set(len(self._pending))
            self._schedule()  # resumes a drain that stopped on a full librdkafka queue
            await asyncio.sleep(_TICK_S if self._schema_ready else _RETRY_S)

    async def _fetch_schema(self) -> None:
        try:  # the registry call blocks: off the loop
            await asyncio.to_thread(self._producer.ensure_schemas, [PREDICTIONS])
            self._schema_ready = True
        except RegistryError as exc:
            log.warning("prediction log waits for the schema registry", error=str(exc), held=len(self._pending))

    def _count_outcomes(self) -> None:
        stats = self._producer.stats()
        for outcome in ("delivered", "failed"):
            delta = stats[outcome] - self._seen[outcome]
            if delta > 0:
                metrics.LOG_RECORDS.labels(outcome).inc(delta)
                self._seen[outcome] = stats[outcome]

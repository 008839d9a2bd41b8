"""Bulk intake of the prediction log for the faust drift job: records in lists, not one faust Event each.

faust-streaming's consumer hands every record to the conductor inside `wait_first`, two asyncio tasks
per record, then wraps it in an Event and passes it through a queue and a stream: about 200 µs a record,
so the job read ~4k predictions/s while aiokafka alone fetched ~180k/s. `BulkConsumer` keeps faust's
group membership, offset tracking and commits, but its drain loop appends the prediction log's records
to a `BatchIntake`; the job counts them in batches and only then acks them, so faust commits an offset
only after the state that includes it was saved (the restart promise of `streams.drift.job`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP


class BatchIntake:
    """Records waiting to be counted; `put` waits while `limit` are waiting (back-pressure on the fetcher)."""

    def __init__(self, topic: str, batch: int, limit: int):
        self.topic = topic
        self.batch = batch
        self.limit = limit
        self.messages: list[Any] = []
        self._ready = asyncio.Event()
        self._room = asyncio.Event()

    async def put(self, message: Any) -> None:
        while len(self.messages) >= self.limit:
            self._room.clear()
            await self._room.wait()
        self.messages.append(message)
        if len(self.messages) >= self.batch:
            self._ready.set()

    async def take(self, within_s: float) -> list[Any]:
        """The waiting records once `batch` are there or `within_s` has passed (possibly none)."""
        if len(self.messages) < self.batch:
            try:
                await asyncio.wait_for(self._ready.wait(), within_s)
            except TimeoutError:
                pass
        self._ready.clear()
        taken, self.messages = self.messages, []
        self._room.set()
        return taken

    def drop(self, partitions: Iterable[TP]) -> int:
        """Forget the records of revoked partitions: never acked, so their new owner reads them again."""
        gone = {(tp.topic, tp.partition) for tp in partitions}
        kept = [m for m in self.messages if (m.topic, m.partition) not in gone]
        dropped = len(self.messages) - len(kept)
        self.messages = kept
        self._room.set()
        return dropped


class BulkConsumer(aiokafka_driver.Consumer):
    """faust's aiokafka consumer with a drain loop that hands the intake's topic over in bulk.

    The loop is faust-streaming 0.15's `Consumer._drain_messages` (read offsets, gaps, commit_every)
    minus the per-record `wait_first`; records of other topics still go through faust's conductor.
    """

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - exercised via the drift job
        intake: BatchIntake | None = getattr(self.app, "intake", None)
        callback = self.callback
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        acks_enabled_for = self.app.topics.acks_enabled_for
        while not (consumer_should_stop() or fetcher_should_stop()):
            records = self.getmany(timeout=1.0)
            await self.sleep(0)
            if self.should_stop:
                break
            seen = 0
            async for tp, message in records:
                seen += 1
                if seen % 1000 == 0:
                    await asyncio.sleep(0)  # let the loop breathe (health checks, timers)
                offset = message.offset
                read = get_read_offset(tp)
                if read is not None and offset < read:
                    continue  # already delivered (faust drops these too)
                if read and offset - read > 1 and acks_enabled_for(message.topic):
                    await self._add_gap(tp, read + 1, offset)
                if self._commit_every is not None and self._n_acked >= self._commit_every:
                    self._n_acked = 0
                    await self.commit()
                if intake is not None and tp.topic == intake.topic:
                    message.incref()  # one owner (the job) acks it once counted
                    await intake.put(message)
                else:
                    await callback(message)
                set_read_offset(tp, offset)


class BulkTransport(aiokafka_driver.Transport):
    """The aiokafka transport with `BulkConsumer`."""

    Consumer = BulkConsumer

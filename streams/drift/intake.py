"""Bulk intake of the prediction log for the faust drift job: records in lists, not one faust Event each.

faust-streaming's consumer hands every record to the conductor inside `wait_first`, two asyncio tasks
per record, then wraps it in an Event and passes it through a queue and a stream: about 200 µs a record,
so the job read ~4k predictions/s while aiokafka alone fetched ~180k/s. `BulkConsumer` keeps faust's
group membership, offset tracking and commits, but its drain loop hands each fetched list of the
prediction log's records (aiokafka's own, no faust Message each) to a `BatchIntake`; the job counts
them in batches and only then acks their offsets (`ack_offsets`), so faust commits an offset only after
the state that includes it was saved (the restart promise of `streams.drift.job`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any

from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.consumer import ack_lock
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP
from mode.utils.futures import notify

Chunk = tuple[TP, list[Any]]  # one partition's records (aiokafka ConsumerRecords), in offset order


class BatchIntake:
    """Records waiting to be counted, in chunks; `put` waits while `limit` records are waiting
    (back-pressure on the fetcher)."""

    def __init__(self, topic: str, batch: int, limit: int):
        self.topic = topic
        self.batch = batch
        self.limit = limit
        self.chunks: list[Chunk] = []
        self.waiting = 0  # records in `chunks`
        self._ready = asyncio.Event()
        self._room = asyncio.Event()

    async def put(self, tp: TP, records: list[Any]) -> None:
        while self.waiting >= self.limit:
            self._room.clear()
            await self._room.wait()
        self.chunks.append((tp, records))
        self.waiting += len(records)
        if self.waiting >= self.batch:
            self._ready.set()

    async def take(self, within_s: float) -> list[Chunk]:
        """The waiting chunks once `batch` records are there or `within_s` has passed (possibly none)."""
        if self.waiting < self.batch:
            try:
                await asyncio.wait_for(self._ready.wait(), within_s)
            except TimeoutError:
                pass
        self._ready.clear()
        taken, self.chunks, self.waiting = self.chunks, [], 0
        self._room.set()
        return taken

    def drop(self, partitions: Iterable[TP]) -> int:
        """Forget the records of revoked partitions: never acked, so their new owner reads them again."""
        gone = {(tp.topic, tp.partition) for tp in partitions}
        kept = [c for c in self.chunks if (c[0].topic, c[0].partition) not in gone]
        dropped = self.waiting - sum(len(records) for _, records in kept)
        self.chunks, self.waiting = kept, self.waiting - dropped
        self._room.set()
        return dropped


def ack_offsets(consumer: FaustConsumer, tp: TP, offsets: Sequence[int]) -> int:
    """faust's `Consumer.ack` for many offsets of one partition at once (its bookkeeping, one lock):
    faust may commit them once every earlier offset is acked too. Returns how many were new."""
    with ack_lock:
        try:
            if not consumer.app.topics.acks_enabled_for(tp.topic):
                return 0
            committed = consumer._committed_offset[tp]
            index = consumer._acked_index[tp]
            new = [o for o in offsets if (committed is None or o >= committed) and o not in index]
            index.update(new)
            consumer._acked[tp].extend(new)
            consumer._n_acked += len(new)
            return len(new)
        finally:
            notify(consumer._waiting_for_ack)


class BulkConsumer(aiokafka_driver.Consumer):
    """faust's aiokafka consumer with a drain loop that hands the intake's topic over in bulk.

    The loop is faust-streaming 0.15's `Consumer._drain_messages` and `getmany` (flow control, generation
    and active-partition checks, read offsets, gaps, commit_every) per fetched list instead of per record;
    records of other topics still go one by one through faust's conductor.
    """

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover - exercised via the drift job
        intake: BatchIntake | None = getattr(self.app, "intake", None)
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        acks_enabled_for = self.app.topics.acks_enabled_for
        while not (consumer_should_stop() or fetcher_should_stop()):
            records, active = await self._wait_next_records(1.0)
            await self.sleep(0)
            if records is None or self.should_stop:
                break
            if not self.flow_active:
                try:
                    await self.perform_seek()  # as faust's getmany: back to the committed offsets
                except Exception as exc:  # noqa: BLE001 - faust logs and goes on too
                    self.log.warning(f"exception performing seek when flow not active {exc}")
                continue
            generation = self.app.consumer_generation_id
            for tp, fetched in records.items():
                if not self.flow_active or self.app.consumer_generation_id != generation:
                    break  # a rebalance started: what is left is re-fetched by the partitions' owners
                if active is not None and tp not in active and tp not in self._buffered_partitions:
                    continue
                self.app.monitor.track_tp_end_offset(tp, self.highwater(tp))
                read = get_read_offset(tp)
                if read is not None:
                    fetched = [r for r in fetched if r.offset >= read]  # already delivered (faust drops these)
                if not fetched:
                    continue
                if acks_enabled_for(tp.topic):
                    previous = read
                    for record in (fetched if fetched[-1].offset - fetched[0].offset + 1 != len(fetched)
                                   else fetched[:1]):  # gaps (compaction, transaction markers) are rare
                        if previous and record.offset - previous > 1:
                            await self._add_gap(tp, previous + 1, record.offset)
                        previous = record.offset
                if self._commit_every is not None and self._n_acked >= self._commit_every:
                    self._n_acked = 0
                    await self.commit()
                if intake is not None and tp.topic == intake.topic:
                    await intake.put(tp, fetched)
                else:
                    for record in fetched:
                        await self.callback(self._to_message(tp, record))
                set_read_offset(tp, fetched[-1].offset)


class BulkTransport(aiokafka_driver.Transport):
    """The aiokafka transport with `BulkConsumer`."""

    Consumer = BulkConsumer

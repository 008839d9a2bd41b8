"""Consumer lag of every consumer group: messages behind the high watermark and seconds behind.

Seconds behind is the age of the oldest unprocessed record (the record at the committed offset),
so a stalled consumer's lag grows with the wall clock even when nothing new is produced. Groups
that keep their offsets elsewhere (the Bytewax flow's recovery store, the learner's snapshots)
also commit them to a group, so this one probe sees every streamml process.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

NO_COMMIT = -1001  # librdkafka's OFFSET_INVALID: the group never committed this partition


@dataclass(frozen=True)
class PartitionLag:
    """One consumer group's lag on one partition."""

    group: str
    topic: str
    partition: int
    committed: int  # next offset the group will process (the low watermark if it never committed)
    end: int  # high watermark
    messages: int
    seconds: float


def lag_of(committed: int, end: int, oldest_ts_ms: int | None, now_ms: int) -> tuple[int, float]:
    """(messages, seconds) behind: nothing behind is 0 s; an unknown oldest timestamp is 0 s too."""
    messages = max(end - committed, 0)
    if messages == 0 or oldest_ts_ms is None or oldest_ts_ms <= 0:
        return messages, 0.0
    return messages, max(now_ms - oldest_ts_ms, 0) / 1000.0


class LagProbe:
    """Measures lag for all groups whose id starts with `prefix` (one admin client, one reader)."""

    def __init__(self, kafka_config: dict, prefix: str = "streamml", timeout_s: float = 5.0):
        self._admin = AdminClient(kafka_config)
        self._reader = Consumer({**kafka_config, "group.id": "streamml-ops-lag-reader", "enable.auto.commit": False,
                                 "enable.partition.eof": False, "fetch.wait.max.ms": 50})
        self._prefix, self._timeout = prefix, timeout_s
        self._cache: OrderedDict[tuple, int] = OrderedDict()

    def groups(self) -> list[str]:
        listed = self._admin.list_consumer_groups(request_timeout=self._timeout).result(self._timeout)
        return sorted(g.group_id for g in listed.valid if g.group_id.startswith(self._prefix)
                      and g.group_id != "streamml-ops-lag-reader")

    def committed(self, group: str) -> dict[tuple[str, int], int]:
        future = self._admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)],
                                                         request_timeout=self._timeout)[group]
        return {(tp.topic, tp.partition): tp.offset for tp in future.result(self._timeout).topic_partitions}

    def measure(self) -> list[PartitionLag]:
        """Lag of every partition every matching group has committed."""
        commits = {g: self.committed(g) for g in self.groups()}
        partitions = {tp for offsets in commits.values() for tp in offsets}
        if not partitions:
            return []
        ends = self._true_ends(self._offsets(partitions, OffsetSpec.latest()))
        starts = self._offsets({tp for offsets in commits.values() for tp, o in offsets.items() if o < 0},
                               OffsetSpec.earliest())
        positions = {(g, tp): (o if o >= 0 else starts.get(tp, 0))
                     for g, offsets in commits.items() for tp, o in offsets.items() if tp in ends}
        oldest = self._timestamps({(tp, pos) for (g, tp), pos in positions.items() if ends[tp] > pos})
        now_ms = int(time.time() * 1000)
        out = []
        for (group, tp), pos in sorted(positions.items()):
            messages, seconds = lag_of(pos, ends[tp], oldest.get((tp, pos)), now_ms)
            out.append(PartitionLag(group, tp[0], tp[1], pos, ends[tp], messages, seconds))
        return out

    def _offsets(self, partitions: set[tuple[str, int]], spec: OffsetSpec) -> dict[tuple[str, int], int]:
        if not partitions:
            return {}
        futures = self._admin.list_offsets({TopicPartition(t, p): spec for t, p in partitions},
                                           request_timeout=self._timeout)
        out = {}
        for tp, fut in futures.items():
            try:
                out[(tp.topic, tp.partition)] = fut.result(self._timeout).offset
            except Exception:  # a deleted topic: skip it rather than fail the whole probe
                continue
        return out

    def _true_ends(self, reported: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
        """Tansu reports the last batch's base offset + 1 as the high watermark: read that batch for the
        real end. Apache Kafka's is exact and the read returns one record. Cached per reported value."""
        out, missing = {}, {}
        for tp, end in reported.items():
            known = self._cache.get(("end", *tp, end))
            if end <= 0 or known is not None:
                out[tp] = known if known is not None else end
            else:
                missing[tp] = end - 1
        for tp, records in self._scan(missing).items():
            out[tp] = max([reported[tp], *(o + 1 for o, _ in records)])
            self._remember(("end", *tp, reported[tp]), out[tp])
            for offset, ts in records:
                self._remember(("ts", *tp, offset), ts)
        return {tp: out.get(tp, end) for tp, end in reported.items()}

    def _timestamps(self, wanted: set[tuple[tuple[str, int], int]]) -> dict[tuple[tuple[str, int], int], int]:
        """Timestamp (ms) of the record at each (partition, offset); cached, since an offset's record never changes."""
        out, missing = {}, {}
        for tp, offset in wanted:
            cached = self._cache.get(("ts", *tp, offset))
            if cached is not None:
                out[(tp, offset)] = cached
            else:
                missing[tp] = offset
        for tp, records in self._scan(missing).items():
            later = [ts for o, ts in records if o >= missing[tp]]
            if later:  # the first record at or after the offset (compaction may have removed it)
                out[(tp, missing[tp])] = later[0]
                self._remember(("ts", *tp, missing[tp]), later[0])
        return out

    def _scan(self, starts: dict[tuple[str, int], int]) -> dict[tuple[str, int], list[tuple[int, int]]]:
        """(offset, timestamp ms) of the records one fetch returns from each partition's start offset."""
        if not starts:
            return {}
        got: dict[tuple[str, int], list[tuple[int, int]]] = {}
        self._reader.assign([TopicPartition(t, p, o) for (t, p), o in starts.items()])
        deadline = time.monotonic() + min(self._timeout, 2.0)
        try:
            while time.monotonic() < deadline:
                msgs = self._reader.consume(10_000, 0.05 if len(got) == len(starts) else 0.2)
                if not msgs and len(got) == len(starts):
                    break  # every partition answered and nothing more is buffered
                for msg in msgs:
                    if msg.error() is None:
                        got.setdefault((msg.topic(), msg.partition()), []).append((msg.offset(), msg.timestamp()[1]))
        finally:
            self._reader.unassign()
        return got

    def _remember(self, key: tuple, value: int) -> None:
        self._cache[key] = value
        while len(self._cache) > 20_000:
            self._cache.popitem(last=False)

    def close(self) -> None:
        self._reader.close()

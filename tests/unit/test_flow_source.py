"""The flow's Kafka source decodes a poll in one go (`read_poll`, pure: messages in, batch out): same events,
late events, dead letters and retries as decoding value after value."""

from __future__ import annotations

import json
import time
from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import bulk
from schemas import serde as serde_module
from schemas.bulk import records_of
from schemas.codec import AvroCodec, frame
from schemas.errors import DecodeError, RegistryError
from schemas.serde import TopicSerde
from schemas.topics import CLICKSTREAM
from schemas.validation import fields_read, validate
from streams.flows import source
from streams.flows.source import read_poll
from streams.kafka.dlq import DeadLetter
from streams.windows.lateness import admit

CODEC = AvroCodec(CLICKSTREAM.schema)
CLICK_ID, UNKNOWN_ID, DOWN_ID = 1, 999, 5
LATENESS_MS = 60_000
T0 = int(time.time() * 1000) - 3_600_000


class Registry:
    """The clickstream contract under CLICK_ID; looking up DOWN_ID fails while `down`."""

    def __init__(self) -> None:
        self.down = True

    def register(self, subject: str, schema: dict[str, Any] | str) -> int:
        return CLICK_ID

    def schema_by_id(self, schema_id: int) -> str | None:
        if schema_id == DOWN_ID and self.down:
            raise RegistryError("registry down")
        return json.dumps(CLICKSTREAM.schema) if schema_id in (CLICK_ID, DOWN_ID) else None


class Msg:
    def __init__(self, offset: int, value: bytes | None, failed: bool = False) -> None:
        self._offset, self._value, self._failed = offset, value, failed

    def error(self) -> str | None:
        return "fetch failed" if self._failed else None

    def offset(self) -> int:
        return self._offset

    def timestamp(self) -> tuple[int, int]:
        return 1, T0 + self._offset

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes:
        return b"u%d" % self._offset


def _read(msgs: list[Msg], registry: Registry, high: int | None = None) -> source.PollRead:
    return read_poll(CLICKSTREAM, 0, TopicSerde(CLICKSTREAM, registry), True, LATENESS_MS, high, msgs,
                     int(time.time() * 1000))


def _event(offset: int, **changes: Any) -> dict[str, Any]:
    return {"event_id": f"e{offset}", "user_id": f"u{offset % 9}", "session_id": "s", "event_type": "click",
            "item_id": f"i{offset}", "price": None if offset % 2 else offset / 4, "ts": T0 + 1000 * offset,
            "page": "/", "referrer": None, "device": "mobile", "country": "DE",
            "props": {"ab": "b"} if offset % 3 else {}, **changes}


def _good(offset: int, schema_id: int = CLICK_ID) -> bytes:
    return frame(schema_id, CODEC.encode(_event(offset)))


def _one_by_one(msgs: list[Msg]) -> tuple[list[tuple[int, dict[str, Any]]], list[int], list[DeadLetter], int | None]:
    """(events, late offsets, dead letters but the late ones, high) as decoding each value in turn gives them."""
    serde, high = TopicSerde(CLICKSTREAM, Registry()), None
    events, late, dead = [], [], []
    for msg in msgs:
        if msg.error() is not None:
            continue
        try:
            record = serde.deserialize(msg.value(), 0, msg.offset())
            validate(CLICKSTREAM, record, int(time.time() * 1000))
        except DecodeError as err:
            err = err.located(CLICKSTREAM.name, 0, msg.offset())
            dead.append(DeadLetter.from_error(err, msg.key(), msg.value(), msg.timestamp()[1]))
            continue
        accepted, high = admit(record["ts"], high, LATENESS_MS, msg.timestamp()[1])
        if accepted:
            events.append((msg.offset(), record))
        else:
            late.append(msg.offset())
    return events, late, dead, high


@pytest.mark.parametrize("corrupt", [False, True])  # True: one bad body, so the poll is decoded one by one
def test_a_poll_gives_what_decoding_value_after_value_gives(corrupt: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    converted: list[int] = []
    monkeypatch.setattr(bulk, "records_of", lambda batch: converted.append(batch.num_rows) or records_of(batch))
    monkeypatch.setattr(serde_module, "BULK_MIN", 64)  # a poll of 77 contract values: decoded in bulk
    msgs = [Msg(o, _good(o)) for o in range(70)]
    msgs += [Msg(70, None), Msg(71, _good(71, UNKNOWN_ID)), Msg(72, None, failed=True),
             Msg(73, frame(CLICK_ID, CODEC.encode(_event(73, user_id="")))),
             Msg(74, _good(74)[:-3] if corrupt else _good(74)),
             Msg(75, frame(CLICK_ID, CODEC.encode(_event(75, ts=T0 - 10 * LATENESS_MS)))),
             *(Msg(o, _good(o)) for o in range(76, 80))]
    read = _read(msgs, Registry())
    batch = read.batch
    events, late, dead, high = _one_by_one(msgs)
    assert batch.events == events and [type(r["props"]) for _, r in batch.events] == [dict] * len(events)
    assert [o for o, _ in batch.late] == late == [75]
    assert [d for d in batch.dead if d.reason != "late"] == dead
    assert {d.offset: d.reason for d in batch.dead} == {70: "empty", 71: "unknown_schema", 73: "missing_key",
                                                        75: "late", **({74: "invalid_avro"} if corrupt else {})}
    assert (read.next_offset, read.retry_at, read.high) == (80, None, high)
    assert converted == ([] if corrupt else [77])  # the values of the contract schema, in bulk


def test_values_of_an_unreachable_schema_are_retried_not_dead_lettered() -> None:
    registry = Registry()
    msgs = [Msg(o, _good(o)) for o in range(70)] + [Msg(70, None), Msg(71, _good(71, DOWN_ID))]
    msgs += [Msg(o, _good(o)) for o in range(72, 80)]
    read = _read(msgs, registry)
    assert [o for o, _ in read.batch.events] == list(range(70))
    assert [(d.offset, d.reason) for d in read.batch.dead] == [(70, "empty")]
    assert (read.retry_at, read.next_offset) == (71, 71)
    registry.down = False
    again = _read(msgs[71:], registry, read.high)  # the broker delivers again from the retried offset
    assert again.batch.events == [(o, _event(o)) for o in range(71, 80)] and not again.batch.dead
    assert (again.next_offset, again.retry_at) == (80, None)


@pytest.mark.parametrize("upto", [-1, 40, 79])  # nothing written yet, part of the poll, all of it (a re-send)
def test_the_event_log_writes_the_bulk_columns_as_it_writes_the_records(upto: int, tmp_path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A poll decoded in bulk carries its events' Arrow columns; the event log writes those instead of the records
    converted back: the same Parquet rows (enums, maps, nulls, times, late flags), dead letters left out."""
    import pyarrow.parquet as pq

    from streams.sinks.parquet import EventLogWriter

    monkeypatch.setattr(serde_module, "BULK_MIN", 64)
    msgs = [Msg(o, _good(o)) for o in range(70)] + [Msg(70, None), Msg(71, _good(71, UNKNOWN_ID)),
                                                    Msg(73, frame(CLICK_ID, CODEC.encode(_event(73, user_id="")))),
                                                    Msg(75, frame(CLICK_ID, CODEC.encode(_event(75, ts=T0 - 10 * LATENESS_MS))))]
    msgs += [Msg(o, _good(o)) for o in range(76, 80)]
    batch = _read(msgs, Registry()).batch
    assert batch.columns is not None and batch.columns.num_rows == len(batch.events) + len(batch.late)
    tables = []
    for name, columns in (("bulk", batch.columns), ("rows", None)):
        batch.columns = columns
        writer = EventLogWriter(tmp_path / name, CLICKSTREAM, 0, upto)
        writer.add(batch)
        writer.flush()
        files = sorted((tmp_path / name).rglob("*.parquet"))
        tables.append([pq.read_table(f) for f in files])
    assert [t.num_rows for t in tables[0]] == [t.num_rows for t in tables[1]]
    assert all(a.equals(b) for a, b in zip(*tables, strict=True))
    assert sum(t.num_rows for t in tables[0]) == len([o for o, _ in batch.events + batch.late if o > upto])


def test_a_poll_decoded_one_by_one_carries_no_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    msgs = [Msg(o, _good(o)) for o in range(10)]
    assert _read(msgs, Registry()).batch.columns is None  # under BULK_MIN: decoded value by value
    monkeypatch.setattr(serde_module, "BULK_MIN", 4)
    columns = _read(msgs, Registry()).batch.columns  # every value logged: the decoded columns as they are
    assert columns is not None and columns.column("event_id").to_pylist() == [f"e{o}" for o in range(10)]


@pytest.mark.parametrize("corrupt", [False, True])
def test_a_poll_decoded_in_bulk_keeps_only_the_fields_asked_for(corrupt: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The records of a bulk-decoded poll keep `fields` (the columns keep all, for the event log); the same events,
    late ones, dead letters and columns as a full read. One decoded value by value keeps every field."""
    monkeypatch.setattr(serde_module, "BULK_MIN", 64)
    msgs = [Msg(o, _good(o)) for o in range(70)] + [Msg(70, None), Msg(73, frame(CLICK_ID, CODEC.encode(
        _event(73, user_id="")))), Msg(74, _good(74)[:-3] if corrupt else _good(74)),
        Msg(75, frame(CLICK_ID, CODEC.encode(_event(75, ts=T0 - 10 * LATENESS_MS))))]
    fields = fields_read(CLICKSTREAM)  # what validation reads, at least: user_id, event_type, item_id, price, ts
    now = int(time.time() * 1000)
    full = read_poll(CLICKSTREAM, 0, TopicSerde(CLICKSTREAM, Registry()), True, LATENESS_MS, None, msgs, now).batch
    part = read_poll(CLICKSTREAM, 0, TopicSerde(CLICKSTREAM, Registry()), True, LATENESS_MS, None, msgs, now,
                     fields).batch
    keep = (lambda r: r) if corrupt else (lambda r: {k: v for k, v in r.items() if k in fields})
    assert part.events == [(o, keep(r)) for o, r in full.events] and len(part.events) == 71 - corrupt
    assert part.late == [(o, keep(r)) for o, r in full.late] and [o for o, _ in part.late] == [75]
    assert part.dead == full.dead and part.high == full.high
    assert (part.columns is None) == corrupt and (corrupt or part.columns.equals(full.columns))


_BREAKS = {  # one change per kind of record the column rules must see as the loop does
    "fine": {}, "blank_user": {"user_id": ""}, "late": {"ts": T0 - 10 * LATENESS_MS}, "back": {"ts": T0 - 1000},
    "future": {"ts": int(time.time() * 1000) + 2 * 3_600_000}, "seconds": {"ts": T0 // 1000},
    "negative_price": {"price": -1.0}, "nan_price": {"price": float("nan")}, "huge_price": {"price": 1e9},
    "zero_price": {"price": 0.0}, "click_without_item": {"item_id": None}, "blank_item": {"item_id": ""},
    "search_without_item": {"event_type": "search", "item_id": None}, "ahead": {"ts": T0 + 3_600_000},
}


@given(st.lists(st.sampled_from(sorted(_BREAKS)), min_size=1, max_size=90), st.booleans(),
       st.one_of(st.none(), st.integers(-LATENESS_MS, 100 * 1000)))
@settings(max_examples=60, deadline=None)
def test_a_poll_read_column_by_column_is_the_poll_read_record_by_record(kinds, trim, start) -> None:
    """Every value decoded in bulk: the rules run on the columns (`suspects`) and lateness over the time column
    (`admit_all`); the batch (events, late ones, every dead letter with its detail, highs, columns, where to go
    on) is the one the loop per record gives, trimmed or not. Bad, late, back-in-time and ahead-of-Kafka-time
    records are mixed at random."""
    msgs = [Msg(o, frame(CLICK_ID, CODEC.encode(_event(o, **_BREAKS[kind])))) for o, kind in enumerate(kinds)]
    high = None if start is None else T0 + start
    now = int(time.time() * 1000)
    fields = fields_read(CLICKSTREAM) | {"session_id"} if trim else None
    reads, went = [], []
    with patch.object(serde_module, "BULK_MIN", 1):
        for rules in (source.suspects, lambda spec, columns, now_ms: None):  # column by column, then the loop
            with patch.object(source, "suspects", rules), patch.object(source, "_read_columns",
                                                                         wraps=source._read_columns) as columns:
                reads.append(read_poll(CLICKSTREAM, 0, TopicSerde(CLICKSTREAM, Registry()), True, LATENESS_MS, high,
                                       msgs, now, fields))
                went.append(columns.call_count)
    by_columns, by_records = reads
    a, b = by_columns.batch, by_records.batch
    assert went == [1, 0] and a.ingest_ms == b.ingest_ms
    assert _same(a.events, b.events) and _same(a.late, b.late) and a.dead == b.dead
    assert (a.high, a.max_kafka_ts, by_columns.high, by_columns.next_offset, by_columns.retry_at) == \
           (b.high, b.max_kafka_ts, by_records.high, by_records.next_offset, by_records.retry_at)
    assert (a.columns is None) == (b.columns is None) and (a.columns is None or a.columns.equals(b.columns))


def _same(x: list[tuple[int, dict[str, Any]]], y: list[tuple[int, dict[str, Any]]]) -> bool:
    """Equal (offset, record) lists, NaN equal to NaN (a NaN price is dead-lettered, but compared all the same)."""
    return repr(x) == repr(y)

"""Feature state for one shard of one entity: apply a micro-batch of events, emit changed values.

Bytewax keys its state by shard (`user:7`), not by entity id, so its per-key overhead is paid per
batch; inside, a plain dict holds one entity state per id (the plan's engine: `EntityState`, or its compiled
twin, which also runs this module's two per-event loops). With the compiled engine, a poll's events can also
arrive as columns (`route_columns`: an `EventBlock` per shard, no dict per event). Pure: no I/O.
"""

from __future__ import annotations

import pickle
import zlib
from dataclasses import dataclass, field
from itertools import islice, takewhile
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas.bulk import python_values, records_of
from schemas.errors import ConfigError
from schemas.topics import CDC_TOPIC_NAMES
from streams.features.definitions import ENTITIES
from streams.features.state import NOT_NULL, EntityPlan, EntityState, native_state
from streams.windows.lateness import MAX_CLOCK_SKEW_MS

PLANS: dict[str, EntityPlan] = {e.name: EntityPlan(e) for e in ENTITIES}
ENGINE = PLANS[ENTITIES[0].name].engine  # the flow's feature-state engine (every plan is built with the same)
# A windowed-source event's time, as `apply` reads it: the time field its topic declares (one for them all).
_TIME_FIELDS = {f.source.time_field for plan in PLANS.values() for f in plan.features
                if f.source.name in plan.windowed_sources}
if len(_TIME_FIELDS) > 1:
    raise ConfigError(f"the windowed source topics name their event time differently ({sorted(_TIME_FIELDS)}): "
                      "give them one time field")
TIME_FIELD = next(iter(_TIME_FIELDS), "ts")
# Topics whose events feed windows (the lateness rule applies to them): derived from the feature list.
WINDOWED_TOPICS = frozenset(t for plan in PLANS.values() for t in plan.windowed_sources)
# What `route` and `ShardState.apply` read of a windowed topic's events: every entity's id field, the time, and
# each plan's fields. A source may drop the rest (tests/unit/test_validation_fields.py checks both read no more).
EVENT_FIELDS = {t: frozenset({TIME_FIELD, *(e.id_field(t) for e in ENTITIES if e.id_field(t) is not None),
                              *(f for plan in PLANS.values() if t in plan.windowed_sources for f in plan.event_fields)})
                for t in WINDOWED_TOPICS}
SEAL_CHUNK = 1024  # final log entries are pickled in chunks of this many, between batches


@dataclass(slots=True)
class EventBlock:
    """A shard's events of one poll as columns read for its entity's plan (`plan_columns`): what the compiled fold
    (`fold_block`) takes row by row as it takes records, without a dict per event."""

    eids: list[str]
    ts: np.ndarray  # int64: each event's time
    passes: np.ndarray  # uint8 (rows, plan columns): the column's filter passes
    has: np.ndarray  # uint8 (rows, plan columns): there is a value to add
    add: np.ndarray  # float64 (rows, plan columns): the value (1 for a count)
    distinct: list[list[Any]]  # per distinct feature of the plan: each row's value
    session: list[Any] | None  # each row's session id; None: the plan has no sessions


@dataclass(slots=True)
class ShardInput:
    """Events of one source batch that belong to one shard of one entity."""

    entity: str
    topic: str
    rows: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (entity id, record)
    shard: str = ""  # the Bytewax key, "user:7"
    max_kafka_ts: int = 0
    partition: int | None = None  # the source partition, and its event-time high after the batch (windowed
    high: int | None = None  # topics): the partition's later events are at most the lateness behind it
    block: EventBlock | None = None  # the events as columns instead of `rows` (`route_columns`)

    def __len__(self) -> int:
        return len(self.rows) if self.block is None else len(self.block.eids)


@dataclass(slots=True)
class EntityWrites:
    """The new absolute values of every entity a micro-batch touched: what the Redis sink writes."""

    entity: str
    rows: list[tuple[str, int, dict[str, Any]]]  # (entity id, event time reflected, values)
    max_kafka_ts: int = 0


@dataclass(slots=True)
class FeatureLogWindow:
    """A closed tumbling window of the feature log: each entity's last values written inside it."""

    entity: str
    window_start: int
    window_end: int
    rows: list[tuple[str, int, dict[str, Any]]]  # (entity id, event time reflected, values)


def shard_of(entity_id: str, shards: int) -> int:
    """Stable across processes (unlike `hash`)."""
    return zlib.crc32(entity_id.encode()) % shards


def route(topic: str, records: list[tuple[int, dict[str, Any]]], max_kafka_ts: int, shards: int,
          partition: int | None = None, high: int | None = None) -> list[tuple[str, ShardInput]]:
    """Split one partition's batch into per-(entity, shard) inputs; the keyed exchange of the flow.
    `partition` and its event-time `high` travel with each input (see `ShardState.close_windows`)."""
    out: dict[str, ShardInput] = {}
    cdc = topic in CDC_TOPIC_NAMES
    for entity in ENTITIES:
        field_name = entity.id_field(topic)
        if field_name is None:
            continue
        prefix = f"{entity.name}:"
        if PLANS[entity.name].native is not None:  # the loop below, compiled
            for k, rows in native_state.group_by_shard(records, field_name, cdc, shards):
                key = prefix + str(k)
                out[key] = ShardInput(entity.name, topic, rows, shard=key, max_kafka_ts=max_kafka_ts,
                                      partition=partition, high=high)
            continue
        for _, record in records:
            if cdc:
                row = record.get("after") or record.get("before") or {}
                value = row.get(field_name)
            else:
                value = record.get(field_name)
            if value is None:
                continue
            eid = value if isinstance(value, str) else str(value)
            key = prefix + str(shard_of(eid, shards))
            part = out.get(key)
            if part is None:
                part = out[key] = ShardInput(entity.name, topic, shard=key, max_kafka_ts=max_kafka_ts,
                                             partition=partition, high=high)
            part.rows.append((eid, record))
    return list(out.items())


def route_columns(topic: str, columns: pa.RecordBatch, max_kafka_ts: int, shards: int, partition: int | None = None,
                  high: int | None = None) -> list[tuple[str, ShardInput]]:
    """`route` for a poll's events as columns (the fields the flow reads, `SourceBatch.event_columns`): each
    native-engine entity's share as an `EventBlock`; an entity whose plan the columns cannot be read for (or the
    Python engine) gets records, as `route` makes them."""
    out: list[tuple[str, ShardInput]] = []
    records: list[tuple[int, dict[str, Any]]] | None = None
    for entity in ENTITIES:
        field_name = entity.id_field(topic)
        if field_name is None:
            continue
        plan = PLANS[entity.name]
        read = plan_columns(plan, columns) if plan.native is not None and topic not in CDC_TOPIC_NAMES else None
        if read is None:
            if records is None:
                records = list(enumerate(records_of(columns)))
            out += [(key, part) for key, part in route(topic, records, max_kafka_ts, shards, partition, high)
                    if part.entity == entity.name]
            continue
        ts, passes, has, add, distinct, session = read
        prefix = f"{entity.name}:"
        for k, eids, rows in native_state.shard_rows(python_values(columns.column(field_name)), shards):
            at = np.array(rows, dtype=np.intp)
            block = EventBlock(eids, ts[at], passes[at], has[at], add[at], [native_state.pick(d, rows) for d in distinct],
                               None if session is None else native_state.pick(session, rows))
            key = prefix + str(k)
            out.append((key, ShardInput(entity.name, topic, shard=key, max_kafka_ts=max_kafka_ts, partition=partition,
                                        high=high, block=block)))
    return out


def plan_columns(plan: EntityPlan, columns: pa.RecordBatch) -> tuple[Any, ...] | None:
    """A poll's events read for `plan`, whole: (times, passes, has, add, distinct values, session ids) as
    `EventBlock` holds them; None when a filter or a value cannot be computed on the columns exactly as the
    fold compares and adds record fields (a type pyarrow will not compare, an integer a double cannot hold)."""
    n, names = columns.num_rows, set(columns.schema.names)

    def array(name: str) -> pa.Array:
        return columns.column(name) if name in names else pa.nulls(n)

    times = array(TIME_FIELD)
    if not pa.types.is_integer(times.type) or times.null_count:
        return None
    width = len(plan.columns)
    passes, has, add = np.ones((n, width), np.uint8), np.ones((n, width), np.uint8), np.ones((n, width), np.float64)
    try:
        for c, column in enumerate(plan.columns):
            for name, expected in column.where:
                passes[:, c] &= _equal(array(name), expected)
            if column.value_field is not None:
                values = array(column.value_field)
                has[:, c] = values.is_valid().to_numpy(zero_copy_only=False)
                add[:, c] = values.cast(pa.float64()).fill_null(0.0).to_numpy(zero_copy_only=False)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
        return None
    distinct = [python_values(array(f.value_field)) for f, _ in plan.distinct]
    session = None if plan.session_field is None else python_values(array(plan.session_field))
    return times.to_numpy().astype(np.int64, copy=False), passes, has, add, distinct, session


def _equal(array: pa.Array, expected: Any) -> np.ndarray:
    """Per row, whether a record's field (None when null) `== expected`, as Python compares them; `NOT_NULL`:
    whether it is set."""
    if expected is NOT_NULL:
        return array.is_valid().to_numpy(zero_copy_only=False)
    if expected is None:
        return array.is_null().to_numpy(zero_copy_only=False)
    if pa.types.is_dictionary(array.type):  # an enum: compare its symbols, then look them up
        symbols = np.array([s == expected for s in array.dictionary.to_pylist()] + [False])
        return symbols[array.indices.fill_null(len(symbols) - 1).to_numpy(zero_copy_only=False)]
    return pc.fill_null(pc.equal(array, pa.scalar(expected)), False).to_numpy(zero_copy_only=False)


class ShardState:
    """All entity states of one shard; `apply` folds a batch and returns the changed values.

    It also keeps the feature log's open tumbling windows (`period_ms`): per window, the last values
    written for each entity. A window closes once the watermark passes its end plus the allowed
    lateness, and is handed out as a `FeatureLogWindow`. The watermark is the lowest event-time high
    among the windowed source partitions feeding the shard, capped by the shard's own event time: the
    shard's own high alone let one partition that ran ahead close windows that a slower one still fed,
    which then reopened and were merged into their files again (128 of 352 windows in the feature-flow
    benchmark). `sources`, the partitions expected, hold windows back until heard from; a partition
    not heard from within `mark_ttl_s` of `clock` (since the state began, for one never heard) stops
    counting, so a quiet one does not stop the log. Closing early only costs a merge, never a row.
    """

    def __init__(self, entity: str, states: dict[str, EntityState] | None = None, *, period_ms: int = 60_000,
                 lateness_ms: int = 300_000, pending: dict[int, dict[str, tuple[int, dict[str, Any]]]] | None = None,
                 high: int = 0, frozen: dict[str, bytes] | None = None, mark_ttl_s: float = 30.0,
                 sources: frozenset[tuple[str, int]] = frozenset(), plan: EntityPlan | None = None):
        self.entity = entity
        self.plan = plan or PLANS[entity]  # another plan: the other engine's, in tests
        self.states: dict[str, EntityState] = states if states is not None else {}
        self.period_ms, self.lateness_ms = period_ms, lateness_ms
        self.pending: dict[int, dict[str, tuple[int, dict[str, Any]]]] = pending if pending is not None else {}
        # Open log windows in snapshots. An entry whose entity has moved on to a later window is final (event time
        # never goes back), so it is pickled once, in a chunk with the others that became final in that epoch; an
        # entry still current holds its entity's present values, so a snapshot names just the entity and `restore`
        # evaluates it again. Pickling a window whole at every epoch it changed cost as much as the window: at
        # 10k ev/s the current one holds a row for nearly every entity of the shard.
        self._chunks: dict[int, list[bytes]] = {}  # window -> its final entries, pickled
        self._live: dict[int, dict[str, None]] = {}  # window -> the entities whose entries are not in its chunks
        self._moved: dict[int, list[str]] = {}  # window -> entities whose entries became final since the snapshot
        self._handed: dict[int, int] = {}  # window -> how many of its chunks a `delta` has handed out
        self.high = high
        self._high_cap: int | None = None  # set per batch from its Kafka timestamps (see `apply`)
        # (topic, partition) -> (its event-time high, `clock` when heard). Not in snapshots: after a restart the
        # marks refill with the first batches, and a window closed early meanwhile is merged, not lost.
        self.marks: dict[tuple[str, int], tuple[int, float]] = {}
        self.mark_ttl_s, self.sources = mark_ttl_s, sources
        self._began: float | None = None  # `clock` at the first batch
        # Snapshots re-pickle only the entities changed since the last one: the rest keep their bytes.
        # Without this, every epoch pickled the whole shard, a cost that grows with the state.
        self._frozen: dict[str, bytes] = frozen if frozen is not None else {}
        # Changed entities -> `clock` at their last change, least recently changed first: `freeze_some` pickles
        # from the front between snapshots, so the epoch boundary, when the flow stands still, finds few left.
        self._dirty: dict[str, float] = dict.fromkeys((eid for eid in self.states if eid not in self._frozen), 0.0)
        self._unsaved: dict[str, bytes | None] = {}  # entities pickled again since the last `delta` (None: gone)
        self.clock = 0.0  # stamp for the entities `apply` changes (the flow sets its wall clock; pure otherwise)

    def close_windows(self, force: bool = False) -> list[FeatureLogWindow]:
        """Windows whose end is behind the shard's event time minus lateness (or just behind it if `force`).

        The window holding the shard's latest event time never closes early: closing it and reopening
        it later would overwrite its file with half the rows.
        """
        limit = self.high if force else self.watermark() - self.lateness_ms
        out = []
        for k in sorted(self.pending):
            end = (k + 1) * self.period_ms
            if end > limit:
                break
            rows = [(eid, ts, values) for eid, (ts, values) in self.pending.pop(k).items()]
            self._chunks.pop(k, None), self._live.pop(k, None), self._moved.pop(k, None), self._handed.pop(k, None)
            out.append(FeatureLogWindow(self.entity, k * self.period_ms, end, rows))
        return out

    def watermark(self) -> int:
        """The event time below which no more events are expected, up to the lateness (see the class)."""
        fresh_after = self.clock - self.mark_ttl_s
        if self._began is not None and self._began >= fresh_after and any(s not in self.marks for s in self.sources):
            return -1  # an expected partition not heard from yet
        live = [high for high, heard in self.marks.values() if heard >= fresh_after]
        return min(self.high, *live) if live else self.high

    def apply(self, inputs: list[ShardInput]) -> EntityWrites:
        plan, states = self.plan, self.states
        touched: dict[str, EntityState] = {}
        max_kts = max((part.max_kafka_ts for part in inputs), default=0)
        # The log windows close by the shard's event time; an event stamped in the future may not move
        # it past its Kafka timestamp (plus skew), or it would close windows that are still filling.
        self._high_cap = max_kts + MAX_CLOCK_SKEW_MS if max_kts > 0 else None
        if self._began is None:
            self._began = self.clock
        period = self.period_ms
        for part in inputs:
            if part.high is not None and part.partition is not None:
                self.marks[(part.topic, part.partition)] = (part.high, self.clock)
            if part.topic in CDC_TOPIC_NAMES:
                for eid, record in part.rows:
                    state = states.get(eid)
                    if state is None:
                        state = states[eid] = plan.new_state()
                    before = state.ts // period
                    state.apply_change(plan, part.topic, record["op"], record.get("after"), record["ts_ms"])
                    if state.ts // period > before:
                        self._seal(eid, before)
                    touched[eid] = state
            elif part.block is not None:  # the loop below, compiled, over columns (`route_columns`)
                b = part.block
                self.high = native_state.fold_block(plan.native, states, b.eids, b.ts, b.passes, b.has, b.add,
                                                    b.distinct, b.session, period, touched, self.pending, self._moved,
                                                    self._live, self._high_cap, self.high)
            elif plan.native is not None:  # the loop below, compiled
                self.high = native_state.fold_events(plan.native, states, part.rows, TIME_FIELD, period, touched,
                                                     self.pending, self._moved, self._live, self._high_cap, self.high)
            else:
                for eid, record in part.rows:
                    state = states.get(eid)
                    if state is None:
                        state = states[eid] = plan.new_state()
                    ts = record[TIME_FIELD]
                    before = state.ts // period
                    if ts // period > before:
                        if eid in touched:
                            # The entity moves on to a later log window inside this batch: keep its
                            # values as of its last event in the window it leaves, so the log does not
                            # depend on where batches happen to end. (Changes from earlier batches were
                            # logged when those batches ended.)
                            self._log(eid, state.ts, state.values(plan))
                        self._seal(eid, before)
                    state.apply_event(plan, record, ts)
                    touched[eid] = state
        if plan.native is not None:  # the loop below, compiled
            rows = native_state.evaluate(touched)
            self.high = native_state.log_rows(rows, self.pending, self._live, period, self._high_cap, self.high)
        else:
            rows = [(eid, state.ts, state.values(plan)) for eid, state in touched.items()]
            for eid, ts, values in rows:
                self._log(eid, ts, values)
        self.seal(SEAL_CHUNK)  # final entries pickled as they come, so few are left for the snapshot
        # To the back of the dirty order: recently changed entities are the likeliest to change again.
        if plan.native is not None:
            native_state.mark_dirty(touched, self._dirty, self.clock)
        else:
            dirty, stamp = self._dirty, self.clock
            for eid in touched:
                dirty.pop(eid, None)
                dirty[eid] = stamp
        return EntityWrites(self.entity, rows, max_kts)

    def _log(self, eid: str, ts: int, values: dict[str, Any]) -> None:
        """Remember `values` as the entity's latest in the log window holding `ts`."""
        cap = self._high_cap
        moved = ts if cap is None or ts < cap else cap
        if moved > self.high:
            self.high = moved
        k = ts // self.period_ms
        window = self.pending.get(k)
        if window is None:
            window = self.pending[k] = {}
            self._live[k] = {}
        window[eid] = (ts, values)
        self._live[k][eid] = None

    def _seal(self, eid: str, k: int) -> None:
        """The entity leaves log window `k` for a later one: its entry there, if any, is final."""
        window = self.pending.get(k)
        if window is not None and eid in window:
            moved = self._moved.get(k)
            if moved is None:
                moved = self._moved[k] = []
            moved.append(eid)

    @property
    def dirty(self) -> int:
        """How many entities changed since they were last pickled (what a snapshot now would pickle)."""
        return len(self._dirty)

    def freeze_some(self, limit: int, changed_before: float = float("inf")) -> int:
        """Pickle up to `limit` of the least recently changed entities, last changed before `changed_before`
        (a `clock` value), ahead of the next snapshot; returns how many. An entity that changes again is
        pickled again (hot ones, changed all the time, are left to the snapshot); the snapshot is the same."""
        dirty, frozen, states, unsaved = self._dirty, self._frozen, self.states, self._unsaved
        oldest = [eid for eid, stamp in takewhile(lambda kv: kv[1] < changed_before, islice(dirty.items(), limit))]
        for eid in oldest:
            del dirty[eid]
            state = states.get(eid)
            if state is None:
                frozen.pop(eid, None)
                unsaved[eid] = None
            else:
                unsaved[eid] = frozen[eid] = state.freeze()
        return len(oldest)

    def snapshot(self) -> bytes:
        """An immutable copy for Bytewax recovery (bytes, so later mutation cannot leak into it); entities
        unchanged since they were last pickled are copied as those bytes."""
        self.freeze_some(len(self._dirty))
        return pickle.dumps((self._frozen, self._seal_windows(), self.high), protocol=pickle.HIGHEST_PROTOCOL)

    def delta(self) -> StateDelta:
        """What changed since the last `delta`, for a store that keeps the rest (`streams/flows/state_store.py`)."""
        self.freeze_some(len(self._dirty))
        windows, handed, fresh = self._seal_windows(), self._handed, {}
        for k, (chunks, _) in windows.items():
            if len(chunks) > handed.get(k, 0):
                fresh[k] = chunks[handed.get(k, 0):]
                handed[k] = len(chunks)
        entities, self._unsaved = self._unsaved, {}
        return StateDelta(entities, fresh, {k: (len(chunks), live) for k, (chunks, live) in windows.items()}, self.high)

    def everything(self) -> tuple[dict[str, bytes], dict[int, list[bytes]]]:
        """Every entity and every final log entry, pickled (after a `delta`): a store's new base."""
        return self._frozen, {k: chunks for k, chunks in self._chunks.items() if chunks}

    def _seal_windows(self) -> dict[int, tuple[list[bytes], list[str]]]:
        """Pickle the log entries made final since the last call; per open window, its chunks and the entities
        whose entries are still current (evaluated again on restore)."""
        windows = {}
        for k in self.pending:
            moved = self._moved.get(k)
            if moved:
                self._seal_moved(k, moved)
            windows[k] = (self._chunks.setdefault(k, []), list(self._live[k]))
        return windows

    def seal(self, at_least: int = 1) -> None:
        """Pickle the final log entries of each window that has `at_least` of them not yet pickled."""
        for k, moved in self._moved.items():
            if len(moved) >= at_least:
                self._seal_moved(k, moved)

    def _seal_moved(self, k: int, moved: list[str]) -> None:
        """Pickle the final entries of window `k` that `moved` names, as one chunk, and empty `moved`."""
        window = self.pending[k]
        self._chunks.setdefault(k, []).append(
            pickle.dumps({eid: window[eid] for eid in moved}, protocol=pickle.HIGHEST_PROTOCOL))
        live = self._live[k]
        for eid in moved:
            live.pop(eid, None)
        moved.clear()

    @classmethod
    def restore(cls, entity: str, snapshot: bytes | None, **options: Any) -> ShardState:
        if snapshot is None:
            return cls(entity, **options)
        frozen, windows, high = pickle.loads(snapshot)
        return cls.from_parts(entity, frozen, windows, high, **options)

    @classmethod
    def from_parts(cls, entity: str, frozen: dict[str, Any], windows: dict[int, Any], high: int,
                   **options: Any) -> ShardState:
        """A state from pickled entities and open windows as `snapshot` lays them out (or earlier layouts)."""
        thaw = (options.get("plan") or PLANS[entity]).thaw
        if frozen and not isinstance(next(iter(frozen.values())), bytes):  # written before per-entity bytes
            state = cls(entity, {eid: thaw(d) for eid, d in frozen.items()}, high=high, **options)
        else:
            state = cls(entity, {eid: thaw(b) for eid, b in frozen.items()}, high=high, frozen=frozen, **options)
        plan, states, period = state.plan, state.states, state.period_ms
        for k, w in windows.items():
            if isinstance(w, tuple):  # (final entries in chunks, entities whose entries are their present values)
                chunks, live = w
                window: dict[str, tuple[int, dict[str, Any]]] = {}
                for chunk in chunks:
                    window.update(pickle.loads(chunk))
                state._chunks[k], state._handed[k], state._live[k] = list(chunks), len(chunks), dict.fromkeys(live)
                for eid in live:
                    entity_state = states[eid]
                    window[eid] = (entity_state.ts, entity_state.values(plan))
            else:  # each window whole (pickled, or a dict before that): its final entries are sealed at the next snapshot
                window = pickle.loads(w) if isinstance(w, bytes) else w
                state._moved[k] = [eid for eid in window if states[eid].ts // period > k]
                state._live[k] = dict.fromkeys(window)
            state.pending[k] = window
        return state


@dataclass(slots=True)
class StateDelta:
    """A shard's changes since its last `delta`: entities pickled again (None: gone), log chunks pickled since,
    and per open window how many chunks it has and which entities' entries are still current."""

    entities: dict[str, bytes | None]
    chunks: dict[int, list[bytes]]
    windows: dict[int, tuple[int, list[str]]]
    high: int

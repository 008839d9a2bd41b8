"""The CDC reader: PostgreSQL logical replication (pgoutput) -> Debezium-style Avro envelopes on Kafka.

At least once, no loss: the slot's confirmed position moves past a transaction only after Kafka
acknowledged every record of it and of every earlier transaction, so a restart (even after kill -9)
resumes from the slot and re-sends at most what was unconfirmed. A first start emits every existing
row (op r) from the snapshot the slot exported when it was created, so no change falls in between.
"""

from __future__ import annotations

import json
import select
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from schemas.codec import AvroCodec, frame
from schemas.errors import CdcError, IncompatibleSchemaError
from schemas.registry import RegistryClient
from schemas.serde import SchemaSource
from streams.cdc import metrics
from streams.cdc.acks import AckTracker, Txn
from streams.cdc.catalog import Catalog, quote_ident
from streams.cdc.columns import TableSpec, converter, envelope_schema, message_key, row_of
from streams.cdc.pgoutput import (
    UNCHANGED_TOAST,
    Begin,
    Commit,
    Delete,
    Insert,
    Relation,
    Truncate,
    Update,
    format_lsn,
    parse,
)
from streams.kafka.admin import ensure_topics
from streams.runtime.lifecycle import Shutdown
from streams.runtime.logging import get_logger
from streams.settings import CdcSettings

log = get_logger(__name__)

# Session settings that fix PostgreSQL's text output to the forms `columns.converter` parses.
SESSION_OPTIONS = "-c TimeZone=UTC -c DateStyle=ISO,YMD -c bytea_output=hex -c extra_float_digits=3"
_SLOT_LAG_EVERY_S = 5.0
_RECONNECT_MAX_S = 30.0
_STANDBY_RETRY_S = 2.0

try:
    _VERSION = version("streamml")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without metadata
    _VERSION = "dev"


class TableStream:
    """One captured table under its current schema: codec, registry id and value converters."""

    def __init__(self, spec: TableSpec, schema_id: int):
        self.spec = spec
        self.topic = spec.topic
        self.schema_id = schema_id
        schema = envelope_schema(spec)
        self.codec = AvroCodec(schema)
        self.converters = [converter(c) for c in spec.columns]
        self.value_type = f"{schema['namespace']}.Value"  # names the union branch: fastavro skips its search
        self.changes = {op: metrics.CHANGES.labels(spec.qualified, op) for op in "cudr"}

    def row(self, values: tuple[Any, ...] | list[Any]) -> dict[str, Any]:
        problems: list[str] = []
        out = row_of(self.spec.columns, self.converters, values, problems)
        for _ in problems:
            metrics.SKIPPED.labels(self.spec.qualified, "unrepresentable").inc()
        return out

    def encode(self, envelope: dict[str, Any]) -> bytes:
        return frame(self.schema_id, self.codec.encode(envelope))


class CdcReader:
    """Snapshot once, then stream the slot; see the module docstring for the delivery promise."""

    def __init__(self, settings: CdcSettings, registry: SchemaSource | None = None,
                 producer_factory: Callable[[dict[str, Any]], Any] = Producer, connect: Callable[..., Any] | None = None):
        if not settings.cdc_dsn.get_secret_value():
            raise CdcError("no source database: pass --dsn postgresql://user:password@host:5432/db "
                           "or set STREAMML_CDC_DSN")
        if not settings.table_names:
            raise CdcError("no tables to capture: pass --tables schema.table[,schema.table…] or set STREAMML_CDC_TABLES")
        self.settings = settings
        self.registry = registry or RegistryClient(settings.schema_registry_url)
        self._connect = connect or _psycopg2_connect
        self.producer = producer_factory(settings.kafka_config(**{
            "client.id": "streamml-cdc", "enable.idempotence": True, "linger.ms": 5,
            "message.timeout.ms": 0,  # never give up on a change: the slot holds it until Kafka takes it
        }))
        self.tracker = AckTracker(on_complete=self._completed)
        self.db = ""
        self.catalog: Catalog | None = None
        self._streams: dict[str, TableStream] = {}  # schema.table -> current schema
        self._by_oid: dict[int, TableStream | None] = {}  # relation oid -> stream (None: not captured)
        self._txn: Txn | None = None
        self._xid = 0
        self._commit_ms = 0
        self._wanted: set[str] = set()

    # ---- lifecycle -------------------------------------------------------------------------------------
    def run(self, shutdown: Shutdown) -> None:
        """Capture until SIGTERM; reconnects to PostgreSQL with backoff, resuming from the slot.

        A database never reached within `cdc_connect_timeout_s` of the start is a configuration problem
        (address, password, pg_hba.conf): `CdcError` then, rather than retrying forever.
        """
        backoff = 1.0
        started = time.monotonic()
        while not shutdown.requested:
            try:
                self._run_once(shutdown)
                backoff = 1.0
            except _connection_errors() as exc:
                if shutdown.requested:
                    break
                if _slot_in_use(exc):  # another reader streams this slot: stand by and take over when it stops
                    log.info("replication slot is in use by another reader; standing by", slot=self.settings.cdc_slot)
                    self._flush(10.0)
                    shutdown.wait(_STANDBY_RETRY_S)
                    continue
                if self.catalog is None and time.monotonic() - started > self.settings.cdc_connect_timeout_s:
                    raise CdcError(f"cannot reach PostgreSQL: {str(exc).strip()}; check --dsn / STREAMML_CDC_DSN "
                                   "(the user needs REPLICATION and pg_hba.conf must allow replication "
                                   "connections)") from exc
                log.warning("postgresql unreachable or connection lost; will resume from the slot",
                            error=str(exc).strip(), retry_in_s=backoff,
                            hint="check STREAMML_CDC_DSN; the user needs REPLICATION and pg_hba.conf must "
                                 "allow replication connections")
                self._flush(10.0)
                shutdown.wait(backoff)
                backoff = min(backoff * 2, _RECONNECT_MAX_S)
        self._flush(30.0)
        log.info("cdc reader stopped", confirmed_lsn=format_lsn(self.tracker.confirmed_lsn))

    def _run_once(self, shutdown: Shutdown) -> None:
        settings = self.settings
        dsn = settings.cdc_dsn.get_secret_value()
        conn = self._connect(dsn)
        repl = self._connect(dsn, replication=True)
        try:
            self.catalog = catalog = Catalog(conn)
            catalog.check_server()
            actual = catalog.database()
            self.db = settings.cdc_db_name or actual
            tables = [catalog.table(name, self.db) for name in settings.table_names]
            _check_unique_topics(tables)
            self._wanted = {t.qualified for t in tables}
            catalog.ensure_publication(settings.cdc_publication, tables)
            ensure_topics(settings.kafka_config(), [t.topic for t in tables], settings.topic_partitions,
                          settings.topic_replication)
            self._streams = {t.qualified: self._register(t) for t in tables}
            self._by_oid = {}
            self.tracker = AckTracker(self.tracker.confirmed_lsn, on_complete=self._completed)
            self._prepare_slot(repl, catalog, tables, actual)
            self._stream(repl, shutdown)
        finally:
            for c in (repl, conn):
                try:
                    c.close()
                except Exception:  # noqa: S110 - closing a broken connection
                    pass

    # ---- slot and snapshot -----------------------------------------------------------------------------
    def _prepare_slot(self, repl: Any, catalog: Catalog, tables: list[TableSpec], database: str) -> None:
        """Create the slot (snapshotting from its exported snapshot) or reuse it; snapshot tables never snapshotted."""
        slot = self.settings.cdc_slot
        existing = catalog.slot(slot)
        done = self._snapshot_done()
        wanted = {t.qualified for t in tables} if self.settings.cdc_snapshot == "initial" else set()
        if existing is not None:
            plugin, slot_db, _active = existing
            if plugin != "pgoutput" or slot_db != database:
                raise CdcError(f"replication slot {slot!r} exists for plugin {plugin} on database {slot_db!r}; "
                               f"choose another --slot or drop it (SELECT pg_drop_replication_slot('{slot}'))")
            missing = [t for t in tables if t.qualified in wanted - done]
            if missing:
                # The slot already streams from an earlier position, so its changes follow these rows on
                # each key's partition and bring every row to its latest state (deletes included).
                log.info("snapshotting tables the slot has not covered", tables=[t.qualified for t in missing])
                temp = self._connect(self.settings.cdc_dsn.get_secret_value(), replication=True)
                try:
                    lsn, snapshot = _create_slot(temp, f"{slot}_snap_{int(time.time())}", temporary=True)
                    self._snapshot(missing, snapshot, lsn, confirms=False)
                finally:
                    temp.close()
            log.info("resuming from replication slot", slot=slot, confirmed_flush=catalog.confirmed_flush(slot))
            return
        lsn, snapshot = _create_slot(repl, slot, temporary=False)
        log.info("created replication slot", slot=slot, consistent_point=format_lsn(lsn))
        self.tracker.confirmed_lsn = lsn
        self._snapshot([t for t in tables if t.qualified in wanted], snapshot, lsn)

    def _state_path(self) -> Path:
        return self.settings.state_dir / f"{self.settings.cdc_slot}.json"

    def _snapshot_done(self) -> set[str]:
        path = self._state_path()
        try:
            return set(json.loads(path.read_text())["snapshotted"])
        except (OSError, ValueError, KeyError):
            return set()

    def _mark_snapshotted(self, tables: list[TableSpec], lsn: int) -> None:
        path = self._state_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        done = sorted(self._snapshot_done() | {t.qualified for t in tables})
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"slot": self.settings.cdc_slot, "snapshotted": done, "lsn": format_lsn(lsn),
                                   "at": datetime.now(UTC).isoformat()}))
        tmp.replace(path)

    def _snapshot(self, tables: list[TableSpec], snapshot: str, lsn: int, confirms: bool = True) -> None:
        """Emit every row of `tables` as op r, read in the exported snapshot; returns once Kafka has them all.

        `confirms`: the snapshot's point may be confirmed to the slot. Not for a temporary slot's snapshot: the
        slot still has to stream the changes before that point (of every table) first.
        """
        if not tables:
            self._mark_snapshotted(tables, lsn)
            return
        conn = self._connect(self.settings.cdc_dsn.get_secret_value())
        txn = self.tracker.begin(0, int(time.time() * 1000))
        started, rows = time.monotonic(), 0
        try:
            with conn.cursor() as cur:
                cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot,))
                for marker, stream, values in _mark_first_last(self._snapshot_rows(cur, tables)):
                    self._emit(stream, txn, "r", None, stream.row(values), snapshot=marker, lsn=lsn, xid=None)
                    rows += 1
                cur.execute("COMMIT")
        finally:
            conn.close()
        self.tracker.commit(txn, lsn if confirms else self.tracker.confirmed_lsn)
        self._flush(None)
        if self.tracker.failure:
            raise CdcError(f"Kafka refused snapshot records: {self.tracker.failure}; nothing was marked done, "
                           "restart to snapshot again")
        self._mark_snapshotted(tables, lsn)
        log.info("snapshot done", tables=[t.qualified for t in tables], rows=rows,
                 seconds=round(time.monotonic() - started, 2))

    def _snapshot_rows(self, cur: Any, tables: list[TableSpec]) -> Iterator[tuple[TableStream, tuple]]:
        fetch = self.settings.cdc_snapshot_fetch
        for table in tables:
            stream = self._streams[table.qualified]
            cols = ", ".join(f"{quote_ident(c.name)}::text" for c in stream.spec.columns)
            cur.execute(f"DECLARE streamml_snapshot NO SCROLL CURSOR FOR SELECT {cols} "  # noqa: S608 - quoted idents
                        f"FROM {quote_ident(table.schema)}.{quote_ident(table.table)}")
            while True:
                cur.execute(f"FETCH {fetch} FROM streamml_snapshot")
                rows = cur.fetchall()
                if not rows:
                    break
                for values in rows:
                    yield stream, values
            cur.execute("CLOSE streamml_snapshot")

    # ---- streaming ---------------------------------------------------------------------------------------
    def _stream(self, repl: Any, shutdown: Shutdown) -> None:
        settings = self.settings
        cur = repl.cursor()
        cur.start_replication(slot_name=settings.cdc_slot, decode=False, start_lsn=0, status_interval=10,
                              options={"proto_version": "1", "publication_names": settings.cdc_publication})
        log.info("streaming changes", slot=settings.cdc_slot, publication=settings.cdc_publication,
                 tables=sorted(self._wanted))
        last_feedback = last_lag = 0.0
        while not shutdown.requested:
            msg = cur.read_message()
            now = time.monotonic()
            if msg is not None:
                self._on_message(msg.payload, msg.data_start)
                self.producer.poll(0)
                if now - last_feedback >= settings.cdc_feedback_s:
                    self._feedback(cur, idle=False)
                    last_feedback = now
                continue
            self.producer.poll(0)
            if now - last_feedback >= settings.cdc_feedback_s:
                self._feedback(cur, idle=True)
                last_feedback = now
            if now - last_lag >= _SLOT_LAG_EVERY_S and self.catalog is not None:
                lag = self.catalog.slot_lag_bytes(settings.cdc_slot)
                if lag is not None:
                    metrics.SLOT_LAG.set(lag)
                last_lag = now
            # Acknowledgements arrive on librdkafka's queue, not this socket: wait briefly while some are due.
            wait_s = 0.005 if self.tracker.unacked else min(0.2, settings.cdc_feedback_s)
            select.select([cur], [], [], wait_s)
        self._flush(30.0)
        self._feedback(cur, idle=False)

    def _feedback(self, cur: Any, idle: bool) -> None:
        """Confirm what Kafka acknowledged; with nothing in flight and every message read, the server's WAL end."""
        if self.tracker.failure:
            raise CdcError(f"Kafka refused a change: {self.tracker.failure}; the slot was not advanced past it, "
                           "fix the cause and restart the reader")
        lsn = self.tracker.advance_idle(cur.wal_end) if idle else self.tracker.confirmable()
        cur.send_feedback(write_lsn=lsn, flush_lsn=lsn, force=True)
        metrics.CONFIRMED_LSN.set(lsn)
        metrics.IN_FLIGHT.set(self.tracker.in_flight)
        oldest = self.tracker.oldest_commit_ms()
        metrics.CONFIRM_LAG.set(0 if oldest is None else max(0.0, time.time() - oldest / 1000))

    def _on_message(self, payload: bytes, lsn: int) -> None:
        message = parse(payload)
        kind = type(message)
        if kind is Insert or kind is Update or kind is Delete:
            self._change(message, lsn)  # type: ignore[arg-type]
        elif kind is Begin:
            self._txn = self.tracker.begin(message.xid, message.commit_ts_ms)  # type: ignore[union-attr]
            self._xid, self._commit_ms = message.xid, message.commit_ts_ms  # type: ignore[union-attr]
        elif kind is Commit:
            if self._txn is not None:
                self.tracker.commit(self._txn, message.end_lsn)  # type: ignore[union-attr]
            self._txn = None
            metrics.TRANSACTIONS.inc()
        elif kind is Relation:
            self._relation(message)  # type: ignore[arg-type]
        elif kind is Truncate:
            for oid in message.relation_oids:  # type: ignore[union-attr]
                stream = self._by_oid.get(oid)
                if stream is not None:
                    metrics.SKIPPED.labels(stream.spec.qualified, "truncate").inc()
                    log.warning("TRUNCATE is not carried over (as Debezium's default); the table's entities keep "
                                "their attributes until their rows change or are deleted", table=stream.spec.qualified)

    def _relation(self, rel: Relation) -> None:
        qualified = f"{rel.namespace}.{rel.name}"
        if qualified not in self._wanted:
            self._by_oid[rel.oid] = None
            return
        assert self.catalog is not None
        columns = self.catalog.describe(rel.namespace, rel.name, [(c.name, c.type_oid) for c in rel.columns])
        if not any(c.key for c in columns):  # no primary key: the replica identity's columns are the key
            columns = [replace(c, key=bool(r.flags & 1)) for c, r in zip(columns, rel.columns, strict=True)]
        current = self._streams[qualified]
        if tuple(columns) != current.spec.columns:
            spec = current.spec.with_columns(columns)
            self._streams[qualified] = self._register(spec)
            log.info("table schema changed; registered the new version", table=qualified,
                     columns=[c.name for c in columns], schema_id=self._streams[qualified].schema_id)
        self._by_oid[rel.oid] = self._streams[qualified]

    def _register(self, spec: TableSpec) -> TableStream:
        """Register `spec`'s envelope schema under `<topic>-value`; the registry refuses incompatible changes."""
        try:
            schema_id = self.registry.register(f"{spec.topic}-value", envelope_schema(spec))
        except IncompatibleSchemaError as exc:
            raise CdcError(f"the new schema of {spec.qualified} is not backward compatible ({exc}); the slot "
                           "stays before this change: revert the DDL, or register the change under a new "
                           "subject and restart") from exc
        metrics.SCHEMAS.labels(spec.qualified).inc()
        return TableStream(spec, schema_id)

    def _change(self, message: Insert | Update | Delete, lsn: int) -> None:
        stream = self._by_oid.get(message.relation_oid)
        if stream is None:
            return
        txn = self._txn
        if txn is None:
            raise CdcError("pgoutput sent a change outside a transaction; is the slot's plugin pgoutput?")
        if isinstance(message, Insert):
            self._emit(stream, txn, "c", None, stream.row(self._fill(stream, message.new, None)), lsn=lsn)
            return
        before = stream.row(self._fill(stream, message.old, None)) if message.old is not None else None
        if isinstance(message, Delete):
            self._emit(stream, txn, "d", before, None, lsn=lsn)
            return
        after = stream.row(self._fill(stream, message.new, message.old))
        spec = stream.spec
        if before is not None and message_key(spec, before) != message_key(spec, after):
            # A primary-key change is a delete of the old key and a create of the new one (as Debezium does).
            self._emit(stream, txn, "d", before, None, lsn=lsn)
            self._emit(stream, txn, "c", None, after, lsn=lsn)
            return
        self._emit(stream, txn, "u", before, after, lsn=lsn)

    def _fill(self, stream: TableStream, values: tuple[Any, ...] | None, old: tuple[Any, ...] | None) -> list[Any]:
        """Unchanged TOASTed values are not sent again: take them from the old row when it has them, else null."""
        out = list(values or ())
        for i, value in enumerate(out):
            if value is UNCHANGED_TOAST:
                prior = old[i] if old is not None and i < len(old) else None
                out[i] = prior if prior is not UNCHANGED_TOAST else None
                if out[i] is None:
                    metrics.SKIPPED.labels(stream.spec.qualified, "unchanged_toast").inc()
        return out

    def _emit(self, stream: TableStream, txn: Txn, op: str, before: dict[str, Any] | None,
              after: dict[str, Any] | None, *, lsn: int, snapshot: str = "false", xid: int | None = -1) -> None:
        spec = stream.spec
        now_ms = int(time.time() * 1000)
        value_type = stream.value_type
        envelope = {
            "before": None if before is None else (value_type, before),
            "after": None if after is None else (value_type, after), "op": op, "ts_ms": now_ms,
            "source": {"version": _VERSION, "connector": "postgresql", "name": self.db,
                       "ts_ms": self._commit_ms if op != "r" else now_ms, "snapshot": snapshot, "db": self.db,
                       "schema": spec.schema, "table": spec.table, "txId": self._xid if xid == -1 else xid,
                       "lsn": lsn, "pos": None},
        }
        value = stream.encode(envelope)
        key = message_key(spec, after if after is not None else before or {})
        self.tracker.sent(txn)
        on_delivery = partial(self._delivered, txn)
        while True:
            try:
                self.producer.produce(stream.topic, value, key.encode(), on_delivery=on_delivery)
                break
            except BufferError:  # the local queue is full: let Kafka catch up (PostgreSQL waits on the slot)
                self.producer.poll(0.1)
        stream.changes[op].inc()

    def _delivered(self, txn: Txn, err: KafkaError | None, msg: Message) -> None:
        self.tracker.acked(txn, None if err is None else f"{msg.topic()}: {err.str()}")

    def _completed(self, txn: Txn) -> None:
        if txn.xid:
            metrics.COMMIT_TO_ACK.observe(max(0.0, time.time() - txn.commit_ts_ms / 1000))

    def _flush(self, timeout_s: float | None) -> None:
        """Wait for Kafka's acknowledgements (forever when `timeout_s` is None)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while len(self.producer) and (deadline is None or time.monotonic() < deadline):
            self.producer.flush(0.5)


def _psycopg2_connect(dsn: str, replication: bool = False) -> Any:
    import psycopg2
    from psycopg2.extras import LogicalReplicationConnection

    if replication:
        return psycopg2.connect(dsn, connection_factory=LogicalReplicationConnection, options=SESSION_OPTIONS)
    conn = psycopg2.connect(dsn, options=SESSION_OPTIONS)
    conn.autocommit = True
    return conn


def _connection_errors() -> tuple[type[BaseException], ...]:
    import psycopg2

    return (psycopg2.OperationalError, psycopg2.InterfaceError)


def _slot_in_use(exc: BaseException) -> bool:
    from psycopg2.errors import ObjectInUse

    return isinstance(exc, ObjectInUse)


def _create_slot(repl: Any, name: str, temporary: bool) -> tuple[int, str]:
    """CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT: (consistent point, snapshot name); the snapshot lives until
    the replication connection runs its next command."""
    from streams.cdc.pgoutput import parse_lsn

    cur = repl.cursor()
    cur.execute(f"CREATE_REPLICATION_SLOT {quote_ident(name)} {'TEMPORARY ' if temporary else ''}"
                "LOGICAL pgoutput EXPORT_SNAPSHOT")
    _slot, consistent_point, snapshot, _plugin = cur.fetchone()
    return parse_lsn(consistent_point), snapshot


def _mark_first_last(rows: Iterator[tuple[TableStream, tuple]]) -> Iterator[tuple[str, TableStream, tuple]]:
    """Debezium's source.snapshot markers: first, true…, last (one lookahead row)."""
    previous = None
    marker = "first"
    for row in rows:
        if previous is not None:
            yield marker, *previous
            marker = "true"
        previous = row
    if previous is not None:
        yield ("last" if marker == "true" else "first"), *previous


def _check_unique_topics(tables: list[TableSpec]) -> None:
    seen: dict[str, str] = {}
    for table in tables:
        other = seen.setdefault(table.topic, table.qualified)
        if other != table.qualified:
            raise CdcError(f"{other} and {table.qualified} would both write {table.topic}; capture one of them "
                           "per reader (or give each reader its own STREAMML_CDC_DB_NAME)")


def main(**overrides: Any) -> None:
    """`streamml run cdc` / `streamml cdc`: settings from STREAMML_CDC_* (and overrides), metrics, SIGTERM."""
    from streams.runtime.lifecycle import serve_metrics
    from streams.runtime.logging import configure_logging
    from streams.settings import load_settings

    settings = load_settings(CdcSettings, **overrides)
    log_ = configure_logging("cdc", settings.log_level, settings.log_format)
    shutdown = Shutdown()
    reader = CdcReader(settings)  # type: ignore[arg-type]
    port = serve_metrics(settings.cdc_metrics_port, settings.metrics_host)  # type: ignore[attr-defined]
    log_.info("cdc reader starting", metrics_port=port, settings=settings.redacted())
    reader.run(shutdown)

